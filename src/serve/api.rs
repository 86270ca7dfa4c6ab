//! The OpenAI API's requests and responses, as JSON: what `rotary serve` accepts (checked
//! field by field, with the error a client can act on) and the bodies it answers with.

use serde_json::{json, Value};

use crate::limits;
use crate::sample::SamplerParams;

/// An error in OpenAI's shape, with its HTTP status.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn new(status: u16, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None }
    }
    /// 400: a request the client must fix; `param` names the field.
    pub fn bad(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::new(400, "invalid_request_error", message)
        }
    }
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.status
            }
        })
    }
}

/// What a generation request asks for, whichever endpoint it came through.
#[derive(Clone, Debug)]
pub struct GenRequest {
    pub sampling: SamplerParams,
    pub max_tokens: Option<usize>,
    pub stops: Vec<String>,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub stream: bool,
    pub include_usage: bool,
}

/// A chat request: the messages and tools as the template takes them.
#[derive(Clone, Debug)]
pub struct ChatRequest {
    pub messages: Vec<Value>,
    pub tools: Option<Value>,
    pub enable_thinking: Option<bool>,
    pub gen: GenRequest,
}

fn number(body: &Value, key: &str) -> Result<Option<f64>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::bad(key, format!("'{key}' must be a number"))),
    }
}

fn count(body: &Value, key: &str) -> Result<Option<usize>, ApiError> {
    match number(body, key)? {
        None => Ok(None),
        Some(x) if x >= 0.0 && x.fract() == 0.0 && x <= u32::MAX as f64 => Ok(Some(x as usize)),
        Some(_) => Err(ApiError::bad(key, format!("'{key}' must be a non-negative integer"))),
    }
}

fn in_range(body: &Value, key: &str, lo: f64, hi: f64) -> Result<Option<f32>, ApiError> {
    match number(body, key)? {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(ApiError::bad(key, format!("'{key}' must be in [{lo}, {hi}]")))
        }
        x => Ok(x.map(|x| x as f32)),
    }
}

/// The body as a JSON object (400 otherwise).
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(400, "invalid_request_error", format!("the body is not JSON: {e}"))
    })?;
    if !v.is_object() {
        return Err(ApiError::new(400, "invalid_request_error", "the body must be a JSON object"));
    }
    Ok(v)
}

/// The sampling and length fields shared by both endpoints. Defaults: llama.cpp's sampler;
/// `seed` is drawn per request when absent, so that requests do not share a sequence.
pub fn gen_request(body: &Value, default_seed: u64) -> Result<GenRequest, ApiError> {
    let mut s = SamplerParams { seed: default_seed, ..SamplerParams::default() };
    if let Some(t) = in_range(body, "temperature", 0.0, 2.0)? {
        s.temp = t;
    }
    if let Some(p) = in_range(body, "top_p", 0.0, 1.0)? {
        s.top_p = p;
    }
    if let Some(k) = count(body, "top_k")? {
        s.top_k = k;
    }
    if let Some(p) = in_range(body, "min_p", 0.0, 1.0)? {
        s.min_p = p;
    }
    if let Some(r) = in_range(body, "repeat_penalty", 0.0, 10.0)? {
        s.repeat_penalty = r;
    }
    if let Some(seed) = number(body, "seed")? {
        s.seed = seed as i64 as u64;
    }
    let max_tokens = match count(body, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => count(body, "max_tokens")?,
    };
    let stops = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if a.len() <= limits::SERVE_STOPS_MAX => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ApiError::bad("stop", "'stop' must hold strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                format!("'stop' must be a string or at most {} strings", limits::SERVE_STOPS_MAX),
            ))
        }
    };
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad("stream", "'stream' must be a boolean")),
    };
    let include_usage =
        body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    if let Some(n) = number(body, "n")? {
        if n != 1.0 {
            return Err(ApiError::bad("n", "only n = 1 is supported"));
        }
    }
    Ok(GenRequest {
        sampling: s,
        max_tokens,
        stops,
        presence_penalty: in_range(body, "presence_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        frequency_penalty: in_range(body, "frequency_penalty", -2.0, 2.0)?.unwrap_or(0.0),
        stream,
        include_usage,
    })
}

/// A /v1/chat/completions body.
pub fn chat_request(body: &Value, default_seed: u64) -> Result<ChatRequest, ApiError> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::bad("messages", "'messages' must be an array"))?;
    if messages.is_empty() || messages.len() > limits::SERVE_MESSAGES_MAX {
        return Err(ApiError::bad(
            "messages",
            format!("'messages' must hold 1 to {} messages", limits::SERVE_MESSAGES_MAX),
        ));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        if !matches!(role, "system" | "developer" | "user" | "assistant" | "tool") {
            return Err(ApiError::bad(
                &format!("messages[{i}].role"),
                format!("unknown role '{role}'"),
            ));
        }
        let mut m = m.clone();
        // Content as a list of parts: the text parts, joined (no images here).
        if let Some(parts) = m.get("content").and_then(Value::as_array) {
            let mut text = String::new();
            for p in parts {
                match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str))
                {
                    (Some("text"), Some(t)) => text.push_str(t),
                    _ => {
                        return Err(ApiError::bad(
                            &format!("messages[{i}].content"),
                            "only text content parts are supported",
                        ))
                    }
                }
            }
            m["content"] = Value::String(text);
        }
        // A null content (an assistant turn that only calls tools) as the empty string, which
        // the templates' string tests expect.
        if m.get("content").is_none_or(Value::is_null) {
            m["content"] = Value::String(String::new());
        }
        if role == "developer" {
            m["role"] = Value::String("system".into());
        }
        out.push(m);
    }
    let tools = match body.get("tools") {
        None | Some(Value::Null) => None,
        Some(Value::Array(t)) if t.len() <= limits::SERVE_TOOLS_MAX => {
            (!t.is_empty()).then(|| Value::Array(t.clone()))
        }
        Some(_) => {
            return Err(ApiError::bad(
                "tools",
                format!("'tools' must be an array of at most {}", limits::SERVE_TOOLS_MAX),
            ))
        }
    };
    let tools = match body.get("tool_choice").and_then(Value::as_str) {
        Some("none") => None,
        _ => tools,
    };
    let enable_thinking =
        body.pointer("/chat_template_kwargs/enable_thinking").and_then(Value::as_bool);
    Ok(ChatRequest { messages: out, tools, enable_thinking, gen: gen_request(body, default_seed)? })
}

/// A /v1/completions body: its prompt (one string).
pub fn completion_prompt(body: &Value) -> Result<String, ApiError> {
    match body.get("prompt") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
            Ok(a[0].as_str().unwrap_or_default().to_string())
        }
        _ => Err(ApiError::bad("prompt", "'prompt' must be a string")),
    }
}

/// OpenAI's finish reason for how generation stopped (src/run.rs `stop_reason`).
pub fn finish_reason(stop_reason: &str, tool_calls: bool) -> &'static str {
    match stop_reason {
        _ if tool_calls => "tool_calls",
        "length" | "context" => "length",
        _ => "stop",
    }
}

pub fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": { "cached_tokens": cached },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_checked() {
        let ok = parse_body(
            concat!(
                r#"{"messages":[{"role":"user","content":"hi"}],"temperature":0,"#,
                r#""max_tokens":5,"stop":["a","b"],"seed":7}"#
            )
            .as_bytes(),
        )
        .expect("json");
        let r = chat_request(&ok, 1).expect("valid");
        assert_eq!(
            (r.gen.sampling.temp, r.gen.max_tokens, r.gen.stops.len(), r.gen.sampling.seed),
            (0.0, Some(5), 2, 7)
        );
        assert_eq!(parse_body(b"{nope").expect_err("bad json").status, 400);
        for bad in [
            r#"{"messages":[]}"#,
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":-1}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"top_p":3}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
        ] {
            let e = chat_request(&parse_body(bad.as_bytes()).expect("json"), 1).expect_err(bad);
            assert_eq!(e.status, 400, "{bad}");
            assert!(e.body()["error"]["message"].is_string());
        }
    }
}
