//! The sanitize stage: personal data in a request is replaced by placeholders before
//! anything leaves the process, and restored in the answer for the client.
//!
//! [`NoSanitizer`] is the pass-through used until detectors are configured: it
//! changes nothing and has nothing to restore.

use crate::error::GatewayError;
use crate::wire::ChatRequest;

pub trait Sanitizer: Send + Sync {
    /// Rewrites `request` in place; returns what restores the placeholders it wrote.
    /// An error rejects the request: it is never forwarded unsanitised.
    fn sanitize(&self, request: &mut ChatRequest) -> Result<Box<dyn Restorer>, GatewayError>;
}

/// Turns the placeholders of one request back into its own values.
pub trait Restorer: Send + Sync {
    /// Restores a whole text.
    fn restore(&self, text: &str) -> String;

    /// A restorer for one streamed text field; it may hold back the tail of a piece
    /// that could be the start of a placeholder split across chunks.
    fn stream(&self) -> Box<dyn StreamRestorer>;
}

pub trait StreamRestorer: Send {
    fn push(&mut self, piece: &str) -> String;
    /// Releases whatever was held back, at the end of the stream.
    fn finish(&mut self) -> String;
}

/// Pass-through: no detection, nothing to restore.
pub struct NoSanitizer;

impl Sanitizer for NoSanitizer {
    fn sanitize(&self, _request: &mut ChatRequest) -> Result<Box<dyn Restorer>, GatewayError> {
        Ok(Box::new(NothingToRestore))
    }
}

struct NothingToRestore;

impl Restorer for NothingToRestore {
    fn restore(&self, text: &str) -> String {
        text.to_owned()
    }

    fn stream(&self) -> Box<dyn StreamRestorer> {
        Box::new(NothingToRestore)
    }
}

impl StreamRestorer for NothingToRestore {
    fn push(&mut self, piece: &str) -> String {
        piece.to_owned()
    }

    fn finish(&mut self) -> String {
        String::new()
    }
}
