//! The request's vocabulary, shared by every layer above: who is calling. (The
//! stages' shared nouns join it as they move out of the stages that own them.)

use std::sync::Arc;

/// Who is calling, as authentication established it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Arc<str>,
    /// The id of the client key used (never the key itself); `None` with auth off.
    pub key_id: Option<Arc<str>>,
}

impl Caller {
    /// The caller when client authentication is off.
    pub fn anonymous() -> Self {
        Caller {
            tenant: "default".into(),
            key_id: None,
        }
    }
}
