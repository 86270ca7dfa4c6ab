//! Chat templates: the model's own Jinja template (`tokenizer.chat_template` in GGUF,
//! tokenizer_config.json in HF directories) rendered with minijinja, with Python's string
//! methods (pycompat) that Qwen's templates call. `--think on|off` sets `enable_thinking`.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// Render `messages` with `template`, ending with the assistant's generation prompt.
/// `thinking`: None leaves the template's default; Some(b) sets `enable_thinking = b`.
pub fn render(template: &str, messages: &[Message], thinking: Option<bool>) -> Result<String> {
    let messages: Vec<serde_json::Value> = messages
        .iter()
        .map(|m| serde_json::json!({ "role": m.role, "content": m.content }))
        .collect();
    render_json(template, &messages, None, thinking)
}

/// `render` for OpenAI-style messages as JSON (`role`, `content`, and for tool use
/// `tool_calls`, `tool_call_id`, `name`), with the request's `tools` passed to the template as
/// Qwen's templates expect them.
pub fn render_json(
    template: &str,
    messages: &[serde_json::Value],
    tools: Option<&serde_json::Value>,
    thinking: Option<bool>,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> std::result::Result<String, JinjaError> {
        Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
    });
    let bad = |e: JinjaError| Error::BadValue {
        key: "tokenizer.chat_template".into(),
        reason: format!("{e:#}"),
    };
    env.add_template("chat", template).map_err(bad)?;
    let tmpl = env.get_template("chat").map_err(bad)?;
    let messages = minijinja::Value::from_serialize(messages);
    let tools = tools.map(minijinja::Value::from_serialize);
    let ctx = match thinking {
        Some(t) => {
            context! { messages, tools, add_generation_prompt => true, enable_thinking => t }
        }
        None => context! { messages, tools, add_generation_prompt => true },
    };
    tmpl.render(ctx).map_err(bad)
}
