//! The optional rerank step (`retrieval.rerank`): the passages a search found,
//! ordered again by a ranker before the ones that fit are kept. The ranker is
//! given to the stage (it calls providers: the composition wires it).

use async_trait::async_trait;
use tokio::time::Instant;

#[async_trait]
pub trait Rerank: Send + Sync {
    /// The indexes of `passages`, the most relevant to `question` first, every
    /// one once; `Err` (said why) leaves the search's order.
    async fn order(
        &self,
        question: &str,
        passages: &[String],
        deadline: Instant,
    ) -> Result<Vec<usize>, String>;
}
