//! What the model writes, split as OpenAI clients expect it: Qwen3's `<think>…</think>` block
//! becomes `reasoning_content` (as llama-server does), and `<tool_call>{json}</tool_call>` blocks
//! become `tool_calls`. Streaming-safe: text that may be the start of a tag is held back until
//! it is known not to be one.

/// Where a piece of the model's output goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Piece {
    Reasoning(String),
    Content(String),
}

const THINK_OPEN: &str = "<think>";
const THINK_CLOSE: &str = "</think>";
const TOOL_OPEN: &str = "<tool_call>";

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    /// Nothing seen yet: a leading `<think>` opens the reasoning.
    Start,
    Reasoning,
    Content,
    /// From the first `<tool_call>` on, everything is kept for `tool_calls`.
    Tools,
}

/// Splits a stream of output text into reasoning, content and tool-call text.
pub struct Splitter {
    state: State,
    held: String,
    tools: bool,
    /// Everything from the first `<tool_call>` on.
    pub tool_text: String,
}

/// The longest suffix of `s` that is a proper prefix of `tag` (text to hold back).
fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

impl Splitter {
    /// `in_reasoning`: the prompt already opened `<think>` (Qwen3.5's templates do);
    /// `tools`: the request offered tools, so `<tool_call>` blocks are parsed.
    pub fn new(in_reasoning: bool, tools: bool) -> Splitter {
        let state = if in_reasoning { State::Reasoning } else { State::Start };
        Splitter { state, held: String::new(), tools, tool_text: String::new() }
    }

    /// Feed `text`; returns the pieces now certain.
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        self.held.push_str(text);
        let mut out = Vec::new();
        loop {
            match self.state {
                State::Start => {
                    let t = self.held.trim_start();
                    if let Some(rest) = t.strip_prefix(THINK_OPEN) {
                        self.held = rest.to_string();
                        self.state = State::Reasoning;
                    } else if THINK_OPEN.starts_with(t) {
                        return out; // maybe a `<think>` still arriving
                    } else {
                        self.state = State::Content;
                    }
                }
                State::Reasoning => match self.held.find(THINK_CLOSE) {
                    Some(at) => {
                        let r = self.held[..at].to_string();
                        if !r.is_empty() {
                            out.push(Piece::Reasoning(r));
                        }
                        self.held = self.held[at + THINK_CLOSE.len()..].trim_start().to_string();
                        self.state = State::Content;
                    }
                    None => {
                        let r = self.release(THINK_CLOSE);
                        out.extend((!r.is_empty()).then_some(Piece::Reasoning(r)));
                        return out;
                    }
                },
                State::Content => {
                    let found = if self.tools { self.held.find(TOOL_OPEN) } else { None };
                    match found {
                        Some(at) => {
                            let c = self.held[..at].to_string();
                            if !c.trim().is_empty() {
                                out.push(Piece::Content(c));
                            }
                            self.tool_text = self.held[at..].to_string();
                            self.held.clear();
                            self.state = State::Tools;
                        }
                        None => {
                            let c = self.release(if self.tools { TOOL_OPEN } else { "" });
                            out.extend((!c.is_empty()).then_some(Piece::Content(c)));
                            return out;
                        }
                    }
                }
                State::Tools => {
                    self.tool_text.push_str(&self.held);
                    self.held.clear();
                    return out;
                }
            }
        }
    }

    /// Everything held but a tail that may be the start of `tag` (which stays held).
    fn release(&mut self, tag: &str) -> String {
        let keep = partial_suffix(&self.held, tag);
        let tail = self.held.split_off(self.held.len() - keep);
        std::mem::replace(&mut self.held, tail)
    }

    /// The end of the output: whatever was held back.
    pub fn finish(&mut self) -> Vec<Piece> {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Reasoning if !held.is_empty() => vec![Piece::Reasoning(held)],
            State::Start | State::Content if !held.is_empty() => vec![Piece::Content(held)],
            State::Tools => {
                self.tool_text.push_str(&held);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}

/// A tool call the model made: its function's name and the arguments as a JSON string.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub name: String,
    pub arguments: String,
}

/// The `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks of `text` (Qwen's
/// format, what its chat template teaches the model). Blocks that do not parse are skipped.
pub fn parse_tool_calls(text: &str) -> Vec<ToolCall> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(TOOL_OPEN) {
        let body = &rest[at + TOOL_OPEN.len()..];
        let end = body.find("</tool_call>").unwrap_or(body.len());
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(body[..end].trim()) {
            if let Some(name) = v.get("name").and_then(|n| n.as_str()) {
                let arguments = match v.get("arguments") {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(a) => a.to_string(),
                    None => "{}".to_string(),
                };
                out.push(ToolCall { name: name.to_string(), arguments });
            }
        }
        rest = &body[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&str], in_reasoning: bool, tools: bool) -> (String, String, String) {
        let mut s = Splitter::new(in_reasoning, tools);
        let (mut r, mut c) = (String::new(), String::new());
        let mut take = |pieces: Vec<Piece>| {
            for p in pieces {
                match p {
                    Piece::Reasoning(t) => r.push_str(&t),
                    Piece::Content(t) => c.push_str(&t),
                }
            }
        };
        for ch in chunks {
            take(s.push(ch));
        }
        take(s.finish());
        (r, c, s.tool_text)
    }

    #[test]
    fn think_blocks_split_across_chunks() {
        let (r, c, _) =
            run(&["<thi", "nk>\nplan", " it</th", "ink>\n\nHello", " world"], false, false);
        assert_eq!(r, "\nplan it");
        assert_eq!(c, "Hello world");
        let (r, c, _) = run(&["Hello <think> is text"], false, false);
        assert_eq!((r.as_str(), c.as_str()), ("", "Hello <think> is text"));
        let (r, c, _) = run(&["why\n</think>\n\nok"], true, false);
        assert_eq!((r.as_str(), c.as_str()), ("why\n", "ok"));
    }

    #[test]
    fn tool_calls_are_kept_and_parsed() {
        let (_, c, t) = run(
            &[
                "Let me check.\n<tool",
                "_call>\n{\"name\": \"get_weather\", \
                 \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            ],
            false,
            true,
        );
        assert_eq!(c, "Let me check.\n");
        let calls = parse_tool_calls(&t);
        assert_eq!(
            calls,
            vec![ToolCall { name: "get_weather".into(), arguments: "{\"city\":\"Paris\"}".into() }]
        );
        assert!(parse_tool_calls("<tool_call>not json</tool_call>").is_empty());
    }
}
