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
    let messages: Vec<_> = messages
        .iter()
        .map(|m| context! { role => m.role.as_str(), content => m.content.as_str() })
        .collect();
    let tmpl = env.get_template("chat").map_err(bad)?;
    let ctx = match thinking {
        Some(t) => context! { messages, add_generation_prompt => true, enable_thinking => t },
        None => context! { messages, add_generation_prompt => true },
    };
    tmpl.render(ctx).map_err(bad)
}
