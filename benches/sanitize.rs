//! Sanitiser throughput on one thread: 1 MB of clean mixed Chinese/English text,
//! 1 MB of text dense with personal data, and the whole per-request cost for a
//! typical 2 KB prompt (detect and replace every text, then restore a 1 KB answer).
//!
//!     cargo bench --bench sanitize

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ragway::sanitize::{PiiSanitizer, Policy, Sanitizer, Vault};
use ragway::wire::ChatRequest;

/// Sentences without personal data, but with the digits real text carries: dates,
/// prices, versions, order numbers, times.
const CLEAN: &[&str] = &[
    "请问如何在控制台中开启搜索功能？我们的版本是 2.3.4，上周升级后找不到入口了。",
    "The quarterly report for 2023-11-24 shows revenue of ¥1,234,567.89, up 12.5% year on year. ",
    "订单号 202311240001234 已于 10:30:45 发货，预计 3 个工作日内送达。",
    "To reset the device, hold the power button for 10 seconds and release it when the LED blinks. ",
    "根据《员工手册》第 4.2 条，年假需提前 15 天申请，每年最多结转 5 天。",
    "Build 4.4.1.208 fixes the memory leak reported in ticket #7731 and improves startup time by 30%. ",
    "会议定于 2024年3月15日 下午 2:00 在三楼 301 会议室举行，请准时参加。",
    "Our API returns HTTP 429 when more than 600 requests per minute are sent from one key. ",
];

/// Sentences each carrying one or two values of different kinds.
const DENSE: &[&str] = &[
    "客户手机 13812345678，身份证 11010519491231002X。",
    "Card 6222021234567890128, mail zhang.san@example.com. ",
    "联系 +86 139-1234-5678 或 010-62345678 转 8021。",
    "USCC 91330100716105852F, server 192.168.10.20. ",
    "护照 E12345678，通行证 C87654321，备用邮箱 li@corp.cn。",
    "key sk-abcdef0123456789abcdef0123, call +1 415 555 2671. ",
];

fn text(sentences: &[&str], bytes: usize) -> String {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut out = String::with_capacity(bytes + 256);
    while out.len() < bytes {
        out.push_str(sentences[rng.usize(..sentences.len())]);
    }
    out
}

fn prompt_2kb() -> ChatRequest {
    let system = text(CLEAN, 1024);
    let user = format!(
        "{} 我的手机是 13812345678，订单绑定的邮箱 zhang.san@example.com，请帮我查询。",
        text(&CLEAN[2..], 900)
    );
    serde_json::from_value(serde_json::json!({
        "model": "chat",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": user}
        ]
    }))
    .expect("a valid request")
}

fn sanitize(c: &mut Criterion) {
    let sanitizer = PiiSanitizer::new(Policy::default(), b"bench".to_vec());
    let mut group = c.benchmark_group("sanitize_1mb");
    group.measurement_time(Duration::from_secs(8));
    for (name, input) in [
        ("clean", text(CLEAN, 1 << 20)),
        ("dense", text(DENSE, 1 << 20)),
    ] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut vault = Vault::new();
                black_box(sanitizer.sanitize_text(black_box(&input), &mut vault))
            })
        });
    }
    group.finish();

    let request = prompt_2kb();
    let answer = format!(
        "{} 已为号码 <PHONE_1> 查询到订单，确认邮件已发往 <EMAIL_1>。",
        text(CLEAN, 900)
    );
    c.bench_function("request_2kb", |b| {
        b.iter_batched(
            || request.clone(),
            |mut request| {
                let mut vault = Vault::new();
                sanitizer
                    .sanitize(&mut request, &mut vault)
                    .expect("sanitised");
                black_box(vault.restore(&answer))
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, sanitize);
criterion_main!(benches);
