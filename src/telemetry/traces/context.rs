//! W3C Trace Context: the `traceparent` a client sends and the one each upstream
//! attempt carries, new ids, and which new traces are kept.

use bytes::Bytes;
use hyper::header::HeaderValue;

pub type TraceId = [u8; 16];
pub type SpanId = [u8; 8];

/// The span a client's `traceparent` names, in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace: TraceId,
    pub span: SpanId,
    pub sampled: bool,
}

/// `traceparent` as W3C Trace Context level 1 reads it: version `00` exactly
/// 55 characters; a later version at least that, its first four fields read the
/// same way. All-zero ids, version `ff` and upper-case hex are refused.
pub fn parse(traceparent: &[u8]) -> Option<Parent> {
    let field = |at: usize, len: usize| traceparent.get(at..at + len);
    let version = hex::<1>(field(0, 2)?)?[0];
    let exact = traceparent.len() == 55;
    let longer = version != 0 && traceparent.len() > 55 && traceparent[55] == b'-';
    if version == 0xff || !(exact || longer) {
        return None;
    }
    if [2, 35, 52].iter().any(|&at| traceparent[at] != b'-') {
        return None;
    }
    let trace = hex::<16>(field(3, 32)?)?;
    let span = hex::<8>(field(36, 16)?)?;
    let flags = hex::<1>(field(53, 2)?)?[0];
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(Parent {
        trace,
        span,
        sampled: flags & 1 == 1,
    })
}

/// `00-{trace}-{span}-{flags}`.
pub fn header(trace: &TraceId, span: &SpanId, sampled: bool) -> HeaderValue {
    let mut text = [0u8; 55];
    text[..3].copy_from_slice(b"00-");
    write_hex(trace, &mut text[3..35]);
    text[35] = b'-';
    write_hex(span, &mut text[36..52]);
    text[52] = b'-';
    text[53..].copy_from_slice(if sampled { b"01" } else { b"00" });
    // SAFETY: hex digits and dashes are visible ASCII, valid in any header
    // value; checking all 55 of them again costs more than writing them
    // (debug builds still check).
    unsafe { HeaderValue::from_maybe_shared_unchecked(Bytes::copy_from_slice(&text)) }
}

/// A client's `tracestate`, passed on as it came; one longer than W3C Trace
/// Context asks a service to carry (512 characters) is dropped whole, as it
/// allows: it would otherwise be copied to every span and every provider.
pub fn state(value: &HeaderValue) -> Option<HeaderValue> {
    (value.len() <= MAX_STATE).then(|| value.clone())
}

const MAX_STATE: usize = 512;

pub fn new_trace() -> TraceId {
    // Two draws of 64 bits: a 128-bit range costs a 128-bit division. The low
    // half is never zero, so neither is the id.
    let id = u128::from(fastrand::u64(..)) << 64 | u128::from(fastrand::u64(1..));
    id.to_be_bytes()
}

pub fn new_span() -> SpanId {
    fastrand::u64(1..).to_be_bytes()
}

/// Whether a new trace is kept at `ratio`: decided by the trace id's low 63 bits,
/// as OpenTelemetry's ratio sampler does, so every service sampling at the same
/// ratio keeps the same traces.
pub fn kept(ratio: f64, trace: &TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace[8..].try_into().expect("eight bytes")) >> 1;
    // `as` saturates: a ratio of 0 keeps nothing.
    low < (ratio * (1u64 << 63) as f64) as u64
}

fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

/// Each byte's two lower-case hex digits: one look-up per byte, where a
/// digit at a time takes two and the shifts between them.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut byte = 0;
    while byte < 256 {
        pairs[byte] = [DIGITS[byte >> 4], DIGITS[byte & 0xf]];
        byte += 1;
    }
    pairs
};

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_traceparent_is_read_as_w3c_trace_context_says() {
        let read = parse(format!("00-{TRACE}-00f067aa0ba902b7-01").as_bytes()).unwrap();
        assert_eq!(read.trace[0], 0x4b);
        assert_eq!(read.span, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(read.sampled);
        let unsampled = parse(format!("00-{TRACE}-00f067aa0ba902b7-00").as_bytes()).unwrap();
        assert!(!unsampled.sampled);
        // A later version may carry more after a dash.
        assert!(parse(format!("01-{TRACE}-00f067aa0ba902b7-01-more").as_bytes()).is_some());
        for refused in [
            format!("00-{TRACE}-00f067aa0ba902b7-01-more"), // version 00 is exact
            format!("ff-{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", "0".repeat(32)),
            format!("00-{TRACE}-0000000000000000-01"),
            format!("00-{}-00f067aa0ba902b7-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-00f067aa0ba902b7-0"),
            format!("00_{TRACE}-00f067aa0ba902b7-01"),
            format!("00-{TRACE}-00f067aa0ba902bz-01"),
            "00-".to_owned(),
            String::new(),
        ] {
            assert_eq!(parse(refused.as_bytes()), None, "{refused}");
        }
    }

    #[test]
    fn a_header_written_is_read_back() {
        let (trace, span) = (new_trace(), new_span());
        let written = header(&trace, &span, true);
        assert_eq!(written.len(), 55);
        let read = parse(written.as_bytes()).unwrap();
        assert_eq!((read.trace, read.span, read.sampled), (trace, span, true));
        assert!(written.to_str().unwrap().ends_with("-01"));
        assert!(
            header(&trace, &span, false)
                .to_str()
                .unwrap()
                .ends_with("-00")
        );
    }

    #[test]
    fn a_tracestate_past_512_characters_is_not_carried() {
        let short = HeaderValue::from_static("vendor=opaque,other=1");
        assert_eq!(state(&short), Some(short.clone()));
        let at_most = HeaderValue::from_str(&format!("v={}", "a".repeat(510))).unwrap();
        assert!(state(&at_most).is_some());
        let long = HeaderValue::from_str(&format!("v={}", "a".repeat(511))).unwrap();
        assert_eq!(state(&long), None);
    }

    #[test]
    fn the_ratio_keeps_its_share_of_new_traces() {
        let kept_of = |ratio| (0..20_000).filter(|_| kept(ratio, &new_trace())).count();
        assert_eq!(kept_of(1.0), 20_000);
        assert_eq!(kept_of(0.0), 0);
        let quarter = kept_of(0.25);
        assert!((4_400..5_600).contains(&quarter), "{quarter}");
    }
}
