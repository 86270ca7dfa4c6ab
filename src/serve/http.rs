//! The HTTP side of `rotary serve`, on axum (hyper, tokio): routes, the API key, body limits,
//! the bounded queue in front of the engine, streaming (server-sent events) and cancellation
//! when a client goes away. The engine runs on its own thread (worker.rs).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::api::{self, ApiError, GenRequest};
use super::text::{parse_tool_calls, Piece, Splitter};
use super::worker::{Event, Job, Metrics, Outcome};
use crate::limits;
use crate::tokenizer::Tokenizer;

/// What every handler shares.
pub struct Server {
    pub jobs: SyncSender<Job>,
    pub tok: Arc<Tokenizer>,
    pub template: Option<String>,
    pub model_id: String,
    pub api_key: Option<String>,
    pub n_ctx: usize,
    pub metrics: Arc<Metrics>,
    pub shutdown: Arc<AtomicBool>,
    /// Requests without a seed get distinct ones.
    pub seeds: AtomicU64,
    pub created: u64,
}

type Shared = Arc<Server>;

pub fn router(server: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/metrics", get(metrics))
        .fallback(|| async { error(ApiError::new(404, "not_found_error", "no such endpoint")) })
        .layer(axum::middleware::from_fn(header_limit))
        .with_state(server)
}

/// 431 for requests whose headers are over SERVE_HEADER_BYTES_MAX.
async fn header_limit(req: Request, next: axum::middleware::Next) -> Response {
    let bytes: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if bytes > limits::SERVE_HEADER_BYTES_MAX {
        let e = ApiError::new(
            431,
            "invalid_request_error",
            format!("the headers are over {} bytes", limits::SERVE_HEADER_BYTES_MAX),
        );
        return error(e);
    }
    next.run(req).await
}

/// Serve `app` on `listener` until `stop` completes, then let the connections in flight end
/// (streams end once the engine stops after its current token; at most 10 s). Each connection:
/// HTTP/1.1 with a header timeout that also bounds keep-alive idling, and a read buffer cap
/// (the router refuses headers over SERVE_HEADER_BYTES_MAX with 431).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    stop: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or a reset before accept: keep serving.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(limits::SERVE_HEADER_SECONDS_MAX))
                    .max_buf_size(4 * limits::SERVE_HEADER_BYTES_MAX) // what hyper reads at most
                    .serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {}
    }
}

fn error(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], e.body().to_string()).into_response()
}

fn ok_json(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// With --api-key, `Authorization: Bearer KEY` (or `x-api-key`) on every endpoint but /health.
fn authorize(s: &Server, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.api_key else { return Ok(()) };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = bearer.or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    match given {
        // Compared in constant time (no early exit on the first differing byte).
        Some(g)
            if g.len() == key.len()
                && g.bytes().zip(key.bytes()).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0 =>
        {
            Ok(())
        }
        _ => Err(ApiError::new(401, "authentication_error", "a missing or wrong API key")),
    }
}

/// The request's JSON body: at most SERVE_BODY_BYTES_MAX, within SERVE_BODY_SECONDS_MAX.
async fn body_json(req: Request) -> Result<Value, ApiError> {
    let read = axum::body::to_bytes(req.into_body(), limits::SERVE_BODY_BYTES_MAX);
    match tokio::time::timeout(Duration::from_secs(limits::SERVE_BODY_SECONDS_MAX), read).await {
        Err(_) => {
            Err(ApiError::new(408, "invalid_request_error", "the request body took too long"))
        }
        Ok(Err(_)) => Err(ApiError::new(
            413,
            "invalid_request_error",
            format!("the body is over {} bytes", limits::SERVE_BODY_BYTES_MAX),
        )),
        Ok(Ok(b)) => api::parse_body(&b),
    }
}

async fn health() -> Response {
    ok_json(json!({ "status": "ok" }))
}

async fn models(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return error(e);
    }
    ok_json(json!({ "object": "list", "data": [{
        "id": s.model_id, "object": "model", "created": s.created, "owned_by": "rotary",
        "meta": { "n_ctx": s.n_ctx, "n_vocab": s.tok.n_vocab() },
    }]}))
}

async fn tokenize(State(s): State<Shared>, req: Request) -> Response {
    let r = async {
        authorize(&s, req.headers())?;
        let body = body_json(req).await?;
        let text = body
            .get("content")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::bad("content", "'content' must be a string"))?;
        let special = body.get("add_special").and_then(Value::as_bool).unwrap_or(false)
            || body.get("parse_special").and_then(Value::as_bool).unwrap_or(true);
        let ids =
            s.tok.encode(text, special).map_err(|e| ApiError::bad("content", e.to_string()))?;
        Ok::<_, ApiError>(json!({ "tokens": ids }))
    };
    r.await.map_or_else(error, ok_json)
}

async fn detokenize(State(s): State<Shared>, req: Request) -> Response {
    let r = async {
        authorize(&s, req.headers())?;
        let body = body_json(req).await?;
        let ids = body
            .get("tokens")
            .and_then(Value::as_array)
            .ok_or_else(|| ApiError::bad("tokens", "'tokens' must be an array"))?;
        let n = s.tok.n_vocab() as u64;
        let ids: Vec<u32> = ids
            .iter()
            .map(|v| {
                v.as_u64().filter(|&i| i < n).map(|i| i as u32).ok_or_else(|| {
                    ApiError::bad("tokens", format!("token ids are integers below {n}"))
                })
            })
            .collect::<Result<_, _>>()?;
        let text = s.tok.decode(&ids).map_err(|e| ApiError::bad("tokens", e.to_string()))?;
        Ok::<_, ApiError>(json!({ "content": text }))
    };
    r.await.map_or_else(error, ok_json)
}

async fn metrics(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&s, &headers) {
        return error(e);
    }
    let m = &s.metrics;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let decode_s = g(&m.decode_micros) as f64 / 1e6;
    let prompt_s = g(&m.prompt_micros) as f64 / 1e6;
    let mut out = String::new();
    let mut line = |name: &str, help: &str, kind: &str, v: f64| {
        out.push_str(&format!(
            "# HELP rotary_{name} {help}\n# TYPE rotary_{name} {kind}\nrotary_{name} {v}\n"
        ));
    };
    line("requests_total", "Generations completed.", "counter", g(&m.requests) as f64);
    line(
        "prompt_tokens_total",
        "Prompt tokens of completed generations.",
        "counter",
        g(&m.prompt_tokens) as f64,
    );
    line(
        "prompt_tokens_cached_total",
        "Prompt tokens the prompt cache already held.",
        "counter",
        g(&m.cached_tokens) as f64,
    );
    line("completion_tokens_total", "Tokens generated.", "counter", g(&m.completion_tokens) as f64);
    line("prompt_seconds_total", "Seconds evaluating prompts.", "counter", prompt_s);
    line("decode_seconds_total", "Seconds generating.", "counter", decode_s);
    line(
        "decode_tokens_per_second",
        "Generated tokens per second of generation, all requests.",
        "gauge",
        if decode_s > 0.0 { g(&m.completion_tokens) as f64 / decode_s } else { 0.0 },
    );
    if let Some(r) = m.rotary.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        line("expert_hit_rate", "Expert cache hit rate of the rotary.", "gauge", r.hit_rate());
        line(
            "link_bytes_total",
            "Bytes copied to the device over the host link.",
            "counter",
            r.h2d_bytes as f64,
        );
        line(
            "peak_vram_bytes",
            "Most device memory in use at once.",
            "gauge",
            r.peak_vram_bytes as f64,
        );
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

/// Sets the job's flag when dropped: the client went away (its response or stream dropped).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Queue a job: 429 when the queue is full, 503 when the engine has stopped.
fn enqueue(
    s: &Server,
    prompt: Vec<u32>,
    gen: GenRequest,
) -> Result<(tokio::sync::mpsc::UnboundedReceiver<Event>, CancelOnDrop), ApiError> {
    if s.shutdown.load(Ordering::Relaxed) {
        return Err(ApiError::new(503, "server_error", "the server is shutting down"));
    }
    if prompt.len() >= s.n_ctx {
        return Err(ApiError::bad(
            "messages",
            format!("the prompt is {} tokens; the context holds {}", prompt.len(), s.n_ctx),
        ));
    }
    if gen.max_tokens.is_some_and(|m| m > s.n_ctx) {
        return Err(ApiError::bad(
            "max_tokens",
            format!("'max_tokens' is over the context ({} tokens)", s.n_ctx),
        ));
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let cancelled = Arc::new(AtomicBool::new(false));
    let job =
        Job { prompt, gen, events: tx, cancelled: cancelled.clone(), shutdown: s.shutdown.clone() };
    match s.jobs.try_send(job) {
        Ok(()) => Ok((rx, CancelOnDrop(cancelled))),
        Err(TrySendError::Full(_)) => {
            Err(ApiError::new(429, "rate_limit_error", "the queue is full; retry later"))
        }
        Err(TrySendError::Disconnected(_)) => {
            Err(ApiError::new(503, "server_error", "the engine has stopped"))
        }
    }
}

/// Seconds since the Unix epoch (OpenAI's `created`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// How one response is written: chat (messages, reasoning, tool calls) or plain completion.
struct Format {
    chat: bool,
    id: String,
    model: String,
    created: u64,
    splitter: Splitter,
    tools: bool,
    include_usage: bool,
}

impl Format {
    fn new(s: &Server, chat: bool, in_reasoning: bool, tools: bool, include_usage: bool) -> Format {
        let n = s.seeds.load(Ordering::Relaxed);
        let id = format!("{}-{:x}{n:x}", if chat { "chatcmpl" } else { "cmpl" }, unix_now());
        Format {
            chat,
            id,
            model: s.model_id.clone(),
            created: unix_now(),
            splitter: Splitter::new(in_reasoning, tools),
            tools,
            include_usage,
        }
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        if self.chat {
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }]
            })
        } else {
            json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{
                    "index": 0,
                    "text": delta.as_str().unwrap_or(""),
                    "finish_reason": finish
                }]
            })
        }
    }

    fn deltas(&self, pieces: Vec<Piece>) -> Vec<Value> {
        pieces
            .into_iter()
            .map(|p| match p {
                Piece::Reasoning(t) => self.chunk(json!({ "reasoning_content": t }), None),
                Piece::Content(t) => self.chunk(json!({ "content": t }), None),
            })
            .collect()
    }

    fn tool_calls(&self) -> Vec<Value> {
        parse_tool_calls(&self.splitter.tool_text)
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                json!({ "index": i, "id": format!("call_{}_{i}", self.id), "type": "function",
                                   "function": { "name": c.name, "arguments": c.arguments } })
            })
            .collect()
    }

    /// The SSE lines for one event of a streamed response.
    fn stream_event(&mut self, ev: Event, out: &mut VecDeque<Bytes>) {
        let mut push = |v: Value| out.push_back(Bytes::from(format!("data: {v}\n\n")));
        match ev {
            Event::Text(t) if self.chat => {
                let pieces = self.splitter.push(&t);
                self.deltas(pieces).into_iter().for_each(&mut push)
            }
            Event::Text(t) => push(self.chunk(Value::String(t), None)),
            Event::Done(o) => {
                let mut calls = Vec::new();
                if self.chat {
                    let rest = self.splitter.finish();
                    self.deltas(rest).into_iter().for_each(&mut push);
                    calls = if self.tools { self.tool_calls() } else { Vec::new() };
                    if !calls.is_empty() {
                        push(self.chunk(json!({ "tool_calls": calls }), None));
                    }
                }
                let finish = api::finish_reason(o.stop_reason, !calls.is_empty());
                let delta = if self.chat { json!({}) } else { Value::String(String::new()) };
                push(self.chunk(delta, Some(finish)));
                if self.include_usage {
                    let mut u = self.chunk(json!({}), None);
                    u["choices"] = json!([]);
                    u["usage"] = api::usage(o.prompt_tokens, o.completion_tokens, o.cached_tokens);
                    push(u);
                }
                out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            }
            Event::Error(e) => {
                push(e.body());
                out.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
            }
        }
    }

    /// The whole response of a non-streamed request.
    fn complete(&mut self, text: &str, o: &Outcome) -> Value {
        let usage = api::usage(o.prompt_tokens, o.completion_tokens, o.cached_tokens);
        if !self.chat {
            let finish = api::finish_reason(o.stop_reason, false);
            return json!({
                "id": self.id,
                "object": "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [{ "index": 0, "text": text, "finish_reason": finish }],
                "usage": usage
            });
        }
        let mut pieces = self.splitter.push(text);
        pieces.extend(self.splitter.finish());
        let (mut reasoning, mut content) = (String::new(), String::new());
        for p in pieces {
            match p {
                Piece::Reasoning(t) => reasoning.push_str(&t),
                Piece::Content(t) => content.push_str(&t),
            }
        }
        let calls = if self.tools { self.tool_calls() } else { Vec::new() };
        let mut message = json!({ "role": "assistant", "content": content });
        if !reasoning.is_empty() {
            message["reasoning_content"] = Value::String(reasoning);
        }
        if !calls.is_empty() {
            message["tool_calls"] = Value::Array(calls.clone());
            if content.trim().is_empty() {
                message["content"] = Value::Null;
            }
        }
        let finish = api::finish_reason(o.stop_reason, !calls.is_empty());
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "message": message, "finish_reason": finish }],
            "usage": usage
        })
    }
}

/// The events of a streamed response as SSE bytes; dropping it (the client left) cancels.
struct SseStream {
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    format: Format,
    pending: VecDeque<Bytes>,
    done: bool,
    _cancel: CancelOnDrop,
}

impl futures_core::Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(b) = self.pending.pop_front() {
                return Poll::Ready(Some(Ok(b)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => self.done = true,
                Poll::Ready(Some(ev)) => {
                    let last = matches!(ev, Event::Done(_) | Event::Error(_));
                    let this = &mut *self;
                    this.format.stream_event(ev, &mut this.pending);
                    this.done = last;
                }
            }
        }
    }
}

/// Queue, then stream or collect the answer.
async fn respond(s: &Server, prompt: Vec<u32>, gen: GenRequest, mut format: Format) -> Response {
    let stream = gen.stream;
    let (mut rx, cancel) = match enqueue(s, prompt, gen) {
        Ok(x) => x,
        Err(e) => return error(e),
    };
    if stream {
        let body = Body::from_stream(SseStream {
            rx,
            format,
            pending: VecDeque::new(),
            done: false,
            _cancel: cancel,
        });
        return (
            [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
            body,
        )
            .into_response();
    }
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Text(t) => text.push_str(&t),
            Event::Done(o) => return ok_json(format.complete(&text, &o)),
            Event::Error(e) => return error(e),
        }
    }
    drop(cancel);
    error(ApiError::new(503, "server_error", "the engine stopped"))
}

async fn chat(State(s): State<Shared>, req: Request) -> Response {
    let prepared = async {
        authorize(&s, req.headers())?;
        let body = body_json(req).await?;
        let seed = s.seeds.fetch_add(1, Ordering::Relaxed);
        let r = api::chat_request(&body, seed)?;
        let template = s.template.as_deref().ok_or_else(|| {
            ApiError::bad("messages", "the model has no chat template (use /v1/completions)")
        })?;
        let text =
            crate::chat::render_json(template, &r.messages, r.tools.as_ref(), r.enable_thinking)
                .map_err(|e| ApiError::bad("messages", e.to_string()))?;
        let ids =
            s.tok.encode(&text, true).map_err(|e| ApiError::bad("messages", e.to_string()))?;
        let in_reasoning = text.trim_end().ends_with("<think>");
        let format = Format::new(&s, true, in_reasoning, r.tools.is_some(), r.gen.include_usage);
        Ok::<_, ApiError>((ids, r.gen, format))
    };
    match prepared.await {
        Ok((ids, gen, format)) => respond(&s, ids, gen, format).await,
        Err(e) => error(e),
    }
}

async fn completions(State(s): State<Shared>, req: Request) -> Response {
    let prepared = async {
        authorize(&s, req.headers())?;
        let body = body_json(req).await?;
        let seed = s.seeds.fetch_add(1, Ordering::Relaxed);
        let prompt = api::completion_prompt(&body)?;
        let gen = api::gen_request(&body, seed)?;
        let ids =
            s.tok.encode(&prompt, true).map_err(|e| ApiError::bad("prompt", e.to_string()))?;
        let format = Format::new(&s, false, false, false, gen.include_usage);
        Ok::<_, ApiError>((ids, gen, format))
    };
    match prepared.await {
        Ok((ids, gen, format)) => respond(&s, ids, gen, format).await,
        Err(e) => error(e),
    }
}
