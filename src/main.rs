//! The `rotary` command line: clap for flags, indicatif for progress. Everything else lives in
//! the library; this file only parses, reports progress and prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use rotary::format::gguf::Gguf;
use rotary::inspect::{self, Report};
use rotary::synth::{self, Preset, QuantMix, SynthOptions};

use rotary::format::hf::HfDir;
use rotary::tokenizer::{Tokenizer, VocabSpec};
use std::io::Write;

use rotary::model::qwen3moe::{top_k, Logits, Session};
use rotary::model::weights::Weights;
use rotary::run::Generation;
use rotary::Result;

const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), "\ncuda: ", env!("ROTARY_CUDA_STATUS"));

#[derive(Parser)]
#[command(name = "rotary", version = VERSION, about = "MoE inference with experts rotating through VRAM")]
struct Cli {
    /// More logging on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Flags shared by the commands that run a model.
#[derive(clap::Args)]
struct ModelArgs {
    /// A GGUF file or an HF model directory; default: the embedded tiny model.
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size")]
    ctx: Option<usize>,
    /// Threads (default: physical cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
    /// cpu (fast) or cpu-ref (scalar reference).
    #[arg(long, default_value = "cpu")]
    backend: String,
}

#[derive(Subcommand)]
enum Command {
    /// Write a GGUF with random weights in the shape of a named preset.
    Synth {
        /// tiny | small | qwen3-30b-a3b
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Type mix, as llama.cpp's --ftype: q8_0 | q4_k_m | q6_k | f16
        #[arg(long, default_value = "q4_k_m")]
        quant: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Take the tokenizer (tokenizer.* keys) from this GGUF, e.g. a real model or
        /// llama.cpp's ggml-vocab-qwen2.gguf; default: a byte-level vocabulary.
        #[arg(long)]
        vocab: Option<PathBuf>,
        /// Output file.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Architecture, hyperparameters, tensors and byte costs of a model file.
    Inspect {
        /// A GGUF file or an HF model directory; default: the embedded tiny model.
        file: Option<PathBuf>,
        /// Plan a VRAM budget (8GiB, 6.3GiB, 512MiB): what is left for the expert cache.
        #[arg(long)]
        vram_budget: Option<String>,
        /// Also list every metadata key.
        #[arg(long)]
        kv: bool,
        /// Also list every tensor.
        #[arg(long)]
        tensors: bool,
    },
    /// Generate text from a prompt, streaming it as it is produced.
    Run {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt.
        #[arg(short = 'p', long, default_value = "Once upon a time")]
        prompt: String,
        /// Tokens to generate at most.
        #[arg(short = 'n', long = "n-predict", default_value_t = 64)]
        n_predict: usize,
        /// Sampling temperature (0 = greedy).
        #[arg(long, default_value_t = 0.0)]
        temp: f32,
    },
    /// Evaluate a prompt and print the top logits at every position.
    Logits {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(short = 'p', long)]
        prompt: String,
        /// How many of the largest logits to print per position.
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Also print the whole logit vector of the last position.
        #[arg(long)]
        full_last: bool,
        #[arg(long)]
        json: bool,
    },
    /// Print the token ids of TEXT.
    Tokenize {
        /// A GGUF file, an HF model directory, or a tokenizer.json; default: the embedded model.
        #[arg(short = 'm', long = "model")]
        model: Option<PathBuf>,
        /// Print {"ids": [...]}.
        #[arg(long)]
        json: bool,
        /// Treat special-token text such as <|im_start|> as plain text.
        #[arg(long)]
        no_parse_special: bool,
        text: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Synth { preset, quant, seed, vocab, output } => {
            cmd_synth(&preset, &quant, seed, vocab, &output)
        }
        Command::Inspect { file, vram_budget, kv, tensors } => {
            cmd_inspect(file, vram_budget.as_deref(), kv, tensors)
        }
        Command::Run { model, prompt, n_predict, temp } => cmd_run(&model, &prompt, n_predict, temp),
        Command::Logits { model, prompt, top, full_last, json } => {
            cmd_logits(&model, &prompt, top, full_last, json)
        }
        Command::Tokenize { model, json, no_parse_special, text } => {
            cmd_tokenize(model, json, !no_parse_special, &text)
        }
    }
}

fn bytes_bar(total: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .expect("valid template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(msg.to_string());
    bar
}

fn cmd_synth(
    preset: &str,
    quant: &str,
    seed: u64,
    vocab: Option<PathBuf>,
    output: &Path,
) -> Result<()> {
    let mut opts = SynthOptions::new(Preset::by_name(preset)?, QuantMix::by_name(quant)?, seed);
    if let Some(path) = vocab {
        let (keys, n_tokens) = synth::vocab_from_gguf(&path)?;
        opts.vocab = keys;
        opts.n_vocab = n_tokens;
    }
    let total = synth::plan(&opts)?.0.layout()?.file_bytes;
    let bar = bytes_bar(total, &format!("synth {preset} {quant}"));
    let stats = synth::write(&opts, output, &mut |done, _| bar.set_position(done))?;
    bar.finish_and_clear();
    let mb_s = stats.file_bytes as f64 / 1e6 / stats.seconds.max(1e-9);
    eprintln!(
        "wrote {} ({} bytes, {} tensors) in {:.1} s: {:.0} MB/s",
        output.display(),
        stats.file_bytes,
        stats.n_tensors,
        stats.seconds,
        mb_s
    );
    Ok(())
}

use rotary::run::embedded_default;

fn cmd_inspect(file: Option<PathBuf>, budget: Option<&str>, kv: bool, tensors: bool) -> Result<()> {
    let budget_bytes = budget.map(inspect::parse_size).transpose()?;
    if let Some(dir) = file.as_ref().filter(|p| p.is_dir()) {
        let hf = HfDir::open(dir)?;
        print!("{}", Report::from_hf(&hf, budget_bytes).map_err(|e| e.in_file(dir))?);
        if tensors {
            let mut names: Vec<&str> = hf.tensor_names().collect();
            names.sort();
            for t in names.iter().filter_map(|n| hf.tensor_info(n)) {
                println!("  {:<48} {:<5} {:?} {} bytes", t.name, t.dtype, t.shape, t.n_bytes());
            }
        }
        return Ok(());
    }
    let g = match &file {
        Some(path) => Gguf::open(path)?,
        None => {
            eprintln!("no file given: inspecting the embedded tiny model (rotary synth --preset tiny)");
            embedded_default()?
        }
    };
    let report = Report::new(&g, budget_bytes).map_err(|e| match &file {
        Some(p) => e.in_file(p),
        None => e,
    })?;
    print!("{report}");
    if kv {
        println!("metadata:");
        inspect::kv_lines(&g).iter().for_each(|l| println!("{l}"));
    }
    if tensors {
        println!("tensors:");
        for t in &g.header.tensors {
            println!("  {:<36} {:<6} {:?} {} bytes", t.name, t.ty.name(), t.dims, t.n_bytes);
        }
    }
    Ok(())
}

/// The tokenizer of a GGUF, an HF directory, or a tokenizer.json.
fn load_tokenizer(model: Option<PathBuf>) -> Result<Tokenizer> {
    let Some(path) = model else {
        return Tokenizer::from_spec(&VocabSpec::from_gguf(&embedded_default()?.header)?);
    };
    if path.is_dir() {
        let dir = HfDir::open(&path)?;
        let json = dir.tokenizer_json().ok_or_else(|| {
            rotary::Error::MissingKey { key: "tokenizer.json".into() }.in_file(&path)
        })?;
        return Tokenizer::from_tokenizer_json(json);
    }
    if path.extension().is_some_and(|e| e == "json") {
        return Tokenizer::from_tokenizer_json(&path);
    }
    let g = Gguf::open(&path)?;
    let spec = VocabSpec::from_gguf(&g).map_err(|e| e.in_file(&path))?;
    Tokenizer::from_spec(&spec).map_err(|e| e.in_file(&path))
}

fn cmd_tokenize(model: Option<PathBuf>, json: bool, parse_special: bool, text: &str) -> Result<()> {
    let tok = load_tokenizer(model)?;
    let ids = tok.encode(text, parse_special)?;
    if json {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("{{\"ids\": [{}]}}", list.join(", "));
    } else {
        let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        println!("{}", list.join(" "));
    }
    Ok(())
}

/// The model, its weights, tokenizer and a session: what run and logits start from.
fn with_session<T>(
    args: &ModelArgs,
    f: impl FnOnce(&mut Session, &Tokenizer) -> Result<T>,
) -> Result<T> {
    if args.model.is_none() {
        eprintln!("no model given (-m): using the embedded tiny model with random weights");
    }
    let file = rotary::run::open_model(args.model.as_deref())?;
    let weights = Weights::load(&file)?;
    let tok = rotary::run::tokenizer_for(&file)?;
    let backend = rotary::backend::by_name(&args.backend, args.threads)?;
    let n_ctx = args.ctx.unwrap_or(weights.cfg.context_length.min(4096) as usize);
    let mut session = Session::new(&weights, backend.as_ref(), n_ctx)?;
    f(&mut session, &tok)
}

fn cmd_run(args: &ModelArgs, prompt: &str, n_predict: usize, temp: f32) -> Result<()> {
    if temp != 0.0 {
        return Err(rotary::Error::Usage("sampling with --temp arrives with the sampler; use --temp 0".into()));
    }
    with_session(args, |session, tok| {
        let ids = tok.encode(prompt, true)?;
        print!("{prompt}");
        let mut out = std::io::stdout();
        let stats = rotary::run::generate(session, tok, &ids, Generation {
            n_predict,
            sample: &mut |logits, _| Ok(rotary::run::argmax(logits)),
            on_text: &mut |text| {
                print!("{text}");
                let _ = out.flush();
                false
            },
            cancelled: &|| false,
        })?;
        println!();
        let rss = rotary::run::peak_rss_bytes().map_or("?".into(), inspect::human_bytes);
        eprintln!(
            "prompt: {} tokens, {:.1} tok/s | decode: {} tokens, {:.1} tok/s ({}) | peak RSS {rss}",
            stats.prompt_tokens, stats.prompt_tok_s(), stats.generated_tokens, stats.decode_tok_s(),
            stats.stop_reason
        );
        Ok(())
    })
}

fn cmd_logits(args: &ModelArgs, prompt: &str, top: usize, full_last: bool, json: bool) -> Result<()> {
    with_session(args, |session, tok| {
        let ids = tok.encode(prompt, true)?;
        let logits = session.forward(&ids, Logits::All)?; // [n, vocab]
        let n_vocab = logits.len() / ids.len();
        let rows: Vec<&[f32]> = logits.chunks_exact(n_vocab).collect();
        let tops: Vec<Vec<(usize, f32)>> = rows.iter().map(|r| top_k(r, top)).collect();
        if json {
            let positions: Vec<String> = tops
                .iter()
                .map(|t| {
                    let pairs: Vec<String> = t.iter().map(|(i, v)| format!("[{i}, {v}]")).collect();
                    format!("{{\"top\": [{}]}}", pairs.join(", "))
                })
                .collect();
            let tokens: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
            print!("{{\"tokens\": [{}], \"positions\": [{}]", tokens.join(", "), positions.join(", "));
            if full_last {
                let last: Vec<String> = rows[rows.len() - 1].iter().map(|v| v.to_string()).collect();
                print!(", \"last_logits\": [{}]", last.join(", "));
            }
            println!("}}");
            return Ok(());
        }
        for (pos, (id, t)) in ids.iter().zip(&tops).enumerate() {
            let piece = String::from_utf8_lossy(tok.token_bytes(*id)).into_owned();
            let list: Vec<String> = t.iter().map(|(i, v)| format!("{i}:{v:.4}")).collect();
            println!("{pos:>4} {id:>7} {piece:<12?} top: {}", list.join("  "));
        }
        if full_last {
            let last: Vec<String> = rows[rows.len() - 1].iter().map(|v| v.to_string()).collect();
            println!("last_logits: {}", last.join(" "));
        }
        Ok(())
    })
}
