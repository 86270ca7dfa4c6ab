//! Chat templates: the official Qwen3 template (fetched by tests/fetch_data.py) rendered by
//! minijinja must equal what HF transformers 5.23 `apply_chat_template` renders (the expected
//! strings below are its output, with and without `enable_thinking`), including the multi-turn
//! rule that strips an earlier assistant turn's <think> block.

use std::path::Path;

use rotary::chat::{render, Message};

fn qwen3_template() -> Option<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen3/tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        println!("SKIP chat: {} missing (run tests/fetch_data.py)", path.display());
        return None;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Some(v["chat_template"].as_str().unwrap().to_string())
}

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "Be brief."),
        Message::new("user", "hi"),
        Message::new("assistant", "<think>\nok\n</think>\n\nHello!"),
        Message::new("user", "2+2?"),
    ]
}

const HEAD: &str = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n";

#[test]
fn qwen3_template_matches_transformers() {
    let Some(t) = qwen3_template() else { return };
    assert_eq!(render(&t, &conversation(), None).unwrap(), HEAD);
    assert_eq!(render(&t, &conversation(), Some(true)).unwrap(), HEAD);
    let off = format!("{HEAD}<think>\n\n</think>\n\n");
    assert_eq!(render(&t, &conversation(), Some(false)).unwrap(), off);
}

#[test]
fn template_errors_name_the_key() {
    let err = render("{% if %}", &[Message::new("user", "x")], None).unwrap_err();
    assert!(err.to_string().contains("tokenizer.chat_template"), "{err}");
    let err = render("{{ raise_exception('no system role') }}", &[], None).unwrap_err();
    assert!(err.to_string().contains("no system role"), "{err}");
}
