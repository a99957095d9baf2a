//! A real OpenAI client library (async-openai) against the gateway: models, chat and
//! streaming, as an application would use them.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
};
use futures_util::StreamExt;

use crate::support::fake::OK_TOKENS;
use crate::support::{FakeProvider, Gateway};

fn client(gw: &Gateway) -> Client<OpenAIConfig> {
    Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}/v1", gw.url))
            .with_api_key("unused"),
    )
}

fn request(model: &str, stream: bool) -> async_openai::types::chat::CreateChatCompletionRequest {
    let message = ChatCompletionRequestUserMessageArgs::default()
        .content("Say hello")
        .build()
        .unwrap();
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(model)
        .messages([message.into()])
        .temperature(0.0);
    if stream {
        args.stream(true);
    }
    args.build().unwrap()
}

#[tokio::test]
async fn the_openai_sdk_lists_models_chats_and_streams() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(
        &fake,
        &[("chat", &["ok"]), ("backup", &["status-503", "ok"])],
    )
    .await;
    let client = client(&gw);

    let models = client.models().list().await.expect("models");
    let ids: Vec<_> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, ["backup", "chat"]);

    let answer = client
        .chat()
        .create(request("chat", false))
        .await
        .expect("chat");
    assert_eq!(
        answer.choices[0].message.content.as_deref(),
        Some(OK_TOKENS.concat().as_str())
    );
    assert_eq!(answer.model, "fake:ok");
    assert_eq!(answer.usage.expect("usage").completion_tokens, 6);

    let mut stream = client
        .chat()
        .create_stream(request("backup", true))
        .await
        .expect("stream");
    let mut text = String::new();
    let mut finish = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a valid chunk");
        for choice in chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
            finish = finish.or(choice.finish_reason);
        }
    }
    assert_eq!(text, OK_TOKENS.concat());
    assert!(finish.is_some(), "the stream finished");
}

#[tokio::test]
async fn the_openai_sdk_sees_errors_as_api_errors() {
    let fake = FakeProvider::start().await;
    let gw = Gateway::over(&fake, &[("chat", &["ok"])]).await;
    let error = client(&gw)
        .chat()
        .create(request("no-such-model", false))
        .await
        .expect_err("unknown model");
    match error {
        async_openai::error::OpenAIError::ApiError(api) => {
            assert_eq!(api.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
}
