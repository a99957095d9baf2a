//! Retrieval benchmark (`make bench-rag`): quality on the labelled set, ingest speed
//! with embeddings, and search latency at 100,000 chunks in the embedded store,
//! against an exact scan of the same vectors measured in the same run.
//!
//! The 100,000 chunks are synthetic (clustered unit vectors, Zipf-distributed words)
//! so the run needs no large corpus; their vectors are what the index sees, whatever
//! produced them. Questions for "embed + search" are the labelled set's, embedded
//! for real.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ragway::retrieve::chunk::{ChunkSize, chunk};
use ragway::retrieve::corpus::{Corpus, Mode, NewDocument, Reach, chunk_id};
use ragway::retrieve::eval::{Labelled, evaluate, evaluate_reranked, read_questions};
use ragway::retrieve::extract::Format;
use ragway::retrieve::keyword;
use ragway::retrieve::store::edge::EdgeStore;
use ragway::retrieve::store::{ChunkPayload, Query, QueryVector, StoredChunk, VectorStore};

const CHUNKS: usize = 100_000;
const TENANTS: usize = 10;
const PER_DOC: usize = 50;
const CLUSTERS: usize = 300;
const VOCABULARY: usize = 20_000;
const QUERIES: usize = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let root = std::env::temp_dir().join(format!("ragway-bench-{}", std::process::id()));
    let device = ragway_engine::device("cpu").unwrap();
    // EMBEDDER names another model (e5: models/e5-small-q4.bin); CJK_DENSE_WEIGHT
    // another fusion weight for Chinese questions; QUALITY_ONLY=1 skips the search
    // at scale.
    let model = std::env::var("EMBEDDER").unwrap_or_else(|_| "models/all-MiniLM-L6-v2".into());
    let embedder = Arc::new(ragway_engine::Embedder::load(Path::new(&model), &device).unwrap());
    println!("embedder: {model}");
    let data = PathBuf::from("tests/data/rag");
    let questions =
        read_questions(&std::fs::read_to_string(data.join("questions.jsonl")).unwrap()).unwrap();
    let cross = std::fs::read_to_string(data.join("cross.jsonl"))
        .map(|text| read_questions(&text).unwrap())
        .unwrap_or_default();

    // 1. Quality, and ingest speed with embeddings.
    let store: Arc<dyn VectorStore> =
        Arc::new(EdgeStore::open(&root.join("quality"), embedder.dimension).unwrap());
    let mut corpus = Corpus::new(store, Arc::clone(&embedder), ChunkSize::default());
    if let Some(weight) = std::env::var("CJK_DENSE_WEIGHT")
        .ok()
        .and_then(|w| w.parse().ok())
    {
        corpus = corpus.with_cjk_dense_weight(weight);
    }
    let mut names: Vec<String> = std::fs::read_dir(data.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let docs: Vec<(String, Vec<u8>)> = names
        .iter()
        .map(|n| (n.clone(), std::fs::read(data.join("docs").join(n)).unwrap()))
        .collect();
    let started = Instant::now();
    let mut chunks = 0u64;
    // Three copies under other ids, for a longer measurement; the first is the set.
    for copy in 0..4 {
        for (name, bytes) in &docs {
            let id = match copy {
                0 => name.clone(),
                n => format!("copy{n}/{name}"),
            };
            let tenant = if copy == 0 { "eval" } else { "copies" };
            let doc = NewDocument::from_bytes(
                id.clone(),
                "default".into(),
                id,
                Format::Markdown,
                None,
                bytes,
                None,
            )
            .unwrap();
            chunks += u64::from(corpus.ingest(tenant, doc).await.unwrap().chunks);
        }
    }
    let elapsed = started.elapsed();
    println!(
        "ingest: {chunks} chunks in {:.2} s = {:.1} chunks/s (chunk, embed, BM25, store)",
        elapsed.as_secs_f64(),
        chunks as f64 / elapsed.as_secs_f64()
    );
    // The embedder alone over the same chunks: what ingest cannot go below.
    let texts: Vec<String> = docs
        .iter()
        .flat_map(|(_, bytes)| {
            let text = String::from_utf8_lossy(bytes).into_owned();
            chunk(&text, ChunkSize::default(), &|t| embedder.count_tokens(t))
                .into_iter()
                .map(|c| c.text)
        })
        .collect();
    let texts: Vec<String> = (0..4).flat_map(|_| texts.iter().cloned()).collect();
    let started = Instant::now();
    embedder
        .embed(&texts, ragway_engine::Role::Passage)
        .unwrap();
    let elapsed = started.elapsed();
    println!(
        "embedding alone: {} chunks in {:.2} s = {:.1} chunks/s",
        texts.len(),
        elapsed.as_secs_f64(),
        texts.len() as f64 / elapsed.as_secs_f64()
    );
    quality_table(&corpus, &questions, "mode", ["zh", "en"]).await;
    println!("questions: {}", questions.len());
    if !cross.is_empty() {
        // By the question's language: English questions over Chinese documents,
        // then Chinese over English.
        quality_table(
            &corpus,
            &cross,
            "cross-lingual (question language)",
            ["en", "zh"],
        )
        .await;
        println!("cross-lingual questions: {}", cross.len());
    }
    fit_fusion(&corpus, &embedder, &questions, &cross).await;
    if std::env::var_os("QUALITY_ONLY").is_some() {
        return;
    }

    // 2. Search at 100,000 chunks.
    let dim = embedder.dimension;
    let store = Arc::new(EdgeStore::open(&root.join("scale"), dim).unwrap());
    let mut rng = fastrand::Rng::with_seed(7);
    let centres: Vec<Vec<f32>> = (0..CLUSTERS).map(|_| unit(random(&mut rng, dim))).collect();
    let mut all: Vec<(usize, Vec<f32>)> = Vec::with_capacity(CHUNKS);
    let started = Instant::now();
    for doc in 0..CHUNKS / PER_DOC {
        let tenant = format!("t{}", doc % TENANTS);
        let doc_id = format!("doc{doc}");
        let mut batch = Vec::with_capacity(PER_DOC);
        for index in 0..PER_DOC {
            let centre = &centres[rng.usize(..CLUSTERS)];
            let dense = unit(
                centre
                    .iter()
                    .map(|c| c + 0.08 * (rng.f32() - 0.5))
                    .collect(),
            );
            let text = words(&mut rng, 60);
            let hash = format!("{doc}-{index}");
            all.push((doc % TENANTS, dense.clone()));
            batch.push(StoredChunk {
                id: chunk_id(&tenant, &doc_id, index as u32, &hash),
                dense,
                keywords: keyword::document_vector(&text),
                payload: ChunkPayload {
                    tenant: tenant.clone(),
                    collection: "default".into(),
                    doc_id: doc_id.clone(),
                    chunk_index: index as u32,
                    chunks: PER_DOC as u32,
                    text,
                    title: format!("Document {doc}"),
                    headings: vec!["Section".into()],
                    source: format!("{doc_id}.md"),
                    ingested_at: 0,
                    hash,
                    doc_hash: String::new(),
                },
            });
        }
        store.replace(&tenant, &doc_id, batch).await.unwrap();
    }
    println!(
        "stored {CHUNKS} chunks ({TENANTS} tenants) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let queries: Vec<(usize, Vec<f32>, String)> = (0..QUERIES)
        .map(|_| {
            let centre = &centres[rng.usize(..CLUSTERS)];
            let q = unit(
                centre
                    .iter()
                    .map(|c| c + 0.08 * (rng.f32() - 0.5))
                    .collect(),
            );
            (rng.usize(..TENANTS), q, words(&mut rng, 4))
        })
        .collect();
    latency("before indexing: dense", &store, &queries, true).await;
    let started = Instant::now();
    store.finish().await.unwrap();
    println!(
        "index build (optimize): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    latency("dense (tenant filter)", &store, &queries, true).await;
    latency("keyword (tenant filter)", &store, &queries, false).await;

    // Exact scan of the same vectors: the baseline, and the index's recall@10.
    let mut times = Vec::with_capacity(QUERIES);
    let mut overlap = 0usize;
    for (tenant, q, _) in &queries {
        let t = Instant::now();
        let mut scored: Vec<(f32, usize)> = all
            .iter()
            .enumerate()
            .filter(|(_, (owner, _))| owner == tenant)
            .map(|(i, (_, v))| (dot(q, v), i))
            .collect();
        scored.select_nth_unstable_by(9, |a, b| b.0.total_cmp(&a.0));
        times.push(t.elapsed());
        let mut exact: Vec<f32> = scored[..10].iter().map(|s| s.0).collect();
        exact.sort_by(|a, b| b.total_cmp(a));
        let found = store
            .search(Query {
                tenant: &format!("t{tenant}"),
                collection: None,
                vector: QueryVector::Dense(q),
                limit: 10,
            })
            .await
            .unwrap();
        let threshold = exact[9] - 1e-5;
        overlap += found
            .iter()
            .filter(|h| h.score >= threshold)
            .count()
            .min(10);
    }
    report("exact scan baseline (in memory)", &mut times);
    println!(
        "index recall@10 against the exact scan: {:.3}",
        overlap as f64 / (10 * QUERIES) as f64
    );

    // Embed + hybrid search, one question at a time, as the retrieve stage does.
    let corpus = Corpus::new(store.clone(), Arc::clone(&embedder), ChunkSize::default());
    let mut times = Vec::new();
    for round in 0..5 {
        for (i, question) in questions.iter().enumerate() {
            let tenant = format!("t{}", (i + round) % TENANTS);
            let t = Instant::now();
            corpus
                .search(&tenant, None, &question.q, Mode::Hybrid, 5)
                .await
                .unwrap();
            times.push(t.elapsed());
        }
    }
    report("embed + hybrid search (2 queries + fusion)", &mut times);
    let _ = std::fs::remove_dir_all(&root);
}

async fn latency(
    label: &str,
    store: &EdgeStore,
    queries: &[(usize, Vec<f32>, String)],
    dense: bool,
) {
    let mut times = Vec::with_capacity(queries.len());
    for (tenant, q, text) in queries {
        let tenant = format!("t{tenant}");
        let sparse = keyword::query_vector(text);
        let vector = match dense {
            true => QueryVector::Dense(q),
            false => QueryVector::Keywords(&sparse),
        };
        let t = Instant::now();
        store
            .search(Query {
                tenant: &tenant,
                collection: None,
                vector,
                limit: 20,
            })
            .await
            .unwrap();
        times.push(t.elapsed());
    }
    report(label, &mut times);
}

fn report(label: &str, times: &mut [Duration]) {
    times.sort();
    let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    println!(
        "{label}: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {}",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3,
        times.len()
    );
}

/// Fusion's settings — the dense weight for Chinese questions and how the keyword
/// list follows the nearest passages' language — chosen on one half of the
/// labelled questions (every even line of both files) and reported on the other.
async fn fit_fusion(
    corpus: &Corpus,
    embedder: &Arc<ragway_engine::Embedder>,
    questions: &[Labelled],
    cross: &[Labelled],
) {
    let half = |set: &[Labelled], odd: usize| -> Vec<Labelled> {
        set.iter().skip(odd).step_by(2).cloned().collect()
    };
    let fit = [half(questions, 0), half(cross, 0)].concat();
    let (held, held_cross) = (half(questions, 1), half(cross, 1));
    println!(
        "fusion fit: {} questions to choose on; held out: {} labelled, {} cross-lingual",
        fit.len(),
        held.len(),
        held_cross.len()
    );
    println!(
        "| cjk_dense_weight | reach nearest | reach sharpness | fit recall@5 | fit MRR | held-out recall@5 | held-out MRR | held-out cross-lingual recall@5 | MRR |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut best = (f64::MIN, String::new());
    for weight in [0.1, 0.5, 1.0] {
        for (nearest, sharpness) in [(5, 1), (5, 2), (5, 3), (10, 1), (10, 2), (10, 3)] {
            let reach = Reach { nearest, sharpness };
            let tuned = Corpus::new(
                Arc::clone(corpus.store()),
                Arc::clone(embedder),
                ChunkSize::default(),
            )
            .with_cjk_dense_weight(weight)
            .with_reach(reach);
            let score = |set: Vec<Labelled>| {
                let tuned = &tuned;
                async move {
                    evaluate(tuned, "eval", &set, Mode::Hybrid, 5)
                        .await
                        .unwrap()
                }
            };
            let on_fit = score(fit.clone()).await;
            let on_held = score(held.clone()).await;
            let on_cross = score(held_cross.clone()).await;
            let row = format!("{weight} | {nearest} | {sharpness}");
            println!(
                "| {row} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                on_fit.recall,
                on_fit.mrr,
                on_held.recall,
                on_held.mrr,
                on_cross.recall,
                on_cross.mrr
            );
            // Recall first, MRR to break ties.
            let merit = on_fit.recall * 10.0 + on_fit.mrr;
            if merit > best.0 {
                best = (merit, row);
            }
        }
    }
    println!("chosen on the fit half: {}", best.1);
}

fn random(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
    (0..dim).map(|_| rng.f32() - 0.5).collect()
}

/// Recall@5 and MRR of every mode over `questions`, by question language and all.
async fn quality_table(
    corpus: &Corpus,
    questions: &[ragway::retrieve::eval::Labelled],
    title: &str,
    langs: [&str; 2],
) {
    let [a, b] = langs;
    println!(
        "| {title} | {a} recall@5 | {a} MRR | {b} recall@5 | {b} MRR | all recall@5 | all MRR |"
    );
    println!("|---|---|---|---|---|---|---|");
    for mode in [Mode::Dense, Mode::Keyword, Mode::Hybrid] {
        let mut row = format!("| {mode:?} |");
        for lang in [a, b, "all"] {
            let subset: Vec<_> = questions
                .iter()
                .filter(|q| lang == "all" || q.lang == lang)
                .cloned()
                .collect();
            let s = evaluate(corpus, "eval", &subset, mode, 5).await.unwrap();
            row.push_str(&format!(" {:.3} | {:.3} |", s.recall, s.mrr));
        }
        println!("{row}");
    }
    // Hybrid's 20 candidates, ordered by the embedder as a reranker.
    let embedder = corpus.embedder();
    // A rerank alias with no targets: the embedder ranks.
    let reranker = ragway::pipeline::AliasRanker::new(
        Arc::new(ragway::generate::Ranker::new(
            Arc::new(ragway::telemetry::Metrics::new()),
            Some(Arc::clone(embedder)),
        )),
        Arc::new(ragway::generate::Route {
            alias: "rerank".into(),
            kind: ragway::generate::ModelKind::Rerank,
            rank_locally: true,
            targets: Vec::new(),
            request_timeout: Duration::from_secs(60),
            failover_on_content_filter: false,
            hedge_after: None,
        }),
    );
    let mut row = "| Hybrid, reranked by the embedder |".to_owned();
    for lang in [a, b, "all"] {
        let subset: Vec<_> = questions
            .iter()
            .filter(|q| lang == "all" || q.lang == lang)
            .cloned()
            .collect();
        let s = evaluate_reranked(corpus, "eval", &subset, &reranker, 20, 5)
            .await
            .unwrap();
        row.push_str(&format!(" {:.3} | {:.3} |", s.recall, s.mrr));
    }
    println!("{row}");
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.into_iter().map(|x| x / norm).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `n` words, Zipf-like: low word numbers are far more common.
fn words(rng: &mut fastrand::Rng, n: usize) -> String {
    (0..n)
        .map(|_| {
            let r = rng.f64();
            let w = (VOCABULARY as f64).powf(r) as usize;
            format!("term{w}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}
