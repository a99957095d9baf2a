//! Serving discipline for a chat model: one instance on its own thread (with its own
//! compute threads), fed by a bounded queue. A full queue is refused at once — the
//! caller answers 503 with `Retry-After`, or moves to another target — and a caller
//! that stops listening cancels its generation at the next token.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread;

use crate::chat::{ChatModel, GenerateParams, Generated};
use crate::{EngineError, Message};

/// What a job hears back.
#[derive(Debug)]
pub enum Event {
    /// The prompt is ready; its length in tokens.
    Started {
        prompt_tokens: usize,
    },
    Text(String),
    Done(Generated),
    Failed(EngineError),
}

/// One request for an answer. `sink` gets the events; when it returns `false` (its
/// receiver is gone) the generation stops.
pub struct Job {
    pub messages: Vec<Message>,
    /// The start of the answer, given already: generation goes on from its end,
    /// in the same turn. Empty for a new answer.
    pub prefix: String,
    pub params: GenerateParams,
    pub sink: Box<dyn FnMut(Event) -> bool + Send>,
}

#[derive(Debug, thiserror::Error)]
#[error("the local model's queue is full")]
pub struct QueueFull;

pub struct LocalLlm {
    queue: SyncSender<Job>,
    /// Jobs queued and not yet begun.
    waiting: Arc<AtomicUsize>,
    pub model: Arc<ChatModel>,
}

impl LocalLlm {
    /// Starts the worker: `threads` compute threads, at most `queue` waiting jobs.
    pub fn start(model: ChatModel, threads: usize, queue: usize) -> Result<Self, EngineError> {
        let model = Arc::new(model);
        let (sender, jobs) = sync_channel::<Job>(queue);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .thread_name(|i| format!("ragway-llm-{i}"))
            .build()
            .map_err(|e| EngineError::Load(format!("compute threads: {e}")))?;
        let worker_model = Arc::clone(&model);
        let waiting = Arc::new(AtomicUsize::new(0));
        let taken = Arc::clone(&waiting);
        thread::Builder::new()
            .name("ragway-llm".into())
            .spawn(move || {
                // Ends when every sender is gone (the gateway shut down). A panic
                // ends its own job (the caller sees the stream stop unfinished),
                // never the worker, so later requests are still served.
                for job in jobs {
                    taken.fetch_sub(1, Ordering::Relaxed);
                    let ran = pool.install(|| {
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run(&worker_model, job)
                        }))
                    });
                    if ran.is_err() {
                        tracing::error!("the local model failed on a request");
                    }
                }
            })
            .map_err(|e| EngineError::Load(format!("worker thread: {e}")))?;
        Ok(LocalLlm {
            queue: sender,
            waiting,
            model,
        })
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.waiting.fetch_sub(1, Ordering::Relaxed);
                Err(QueueFull)
            }
        }
    }

    /// Jobs queued and not yet begun.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

fn run(model: &ChatModel, mut job: Job) {
    // The start of an answer being continued takes its room in the context
    // beside the answer still to come.
    let fitted = model.answer_tokens(&job.prefix).and_then(|prefix| {
        let reserve = job.params.max_tokens + prefix.len();
        let (mut prompt, dropped) = model.fitted_prompt(&job.messages, reserve)?;
        prompt.extend(prefix);
        Ok((prompt, dropped))
    });
    let prompt = match fitted {
        Ok((prompt, dropped)) => {
            if dropped > 0 {
                tracing::info!(dropped, "older turns dropped to fit the context window");
            }
            prompt
        }
        Err(e) => {
            (job.sink)(Event::Failed(e));
            return;
        }
    };
    if !(job.sink)(Event::Started {
        prompt_tokens: prompt.len(),
    }) {
        return; // the caller left while the job waited
    }
    let sink = &mut job.sink;
    let result = model.generate(&prompt, &job.params, &mut |text| {
        sink(Event::Text(text.to_owned()))
    });
    let _ = match result {
        Ok(generated) => sink(Event::Done(generated)),
        Err(e) => sink(Event::Failed(e)),
    };
}
