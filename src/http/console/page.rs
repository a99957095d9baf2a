//! The console's pages: minijinja templates compiled into the binary (HTML-escaped
//! by their `.html` names), in English or Chinese.

use std::sync::OnceLock;

use axum::http::HeaderMap;
use minijinja::Environment;
use serde_json::Value;

/// The page language: `?lang=`, then the `ragway_console_lang` cookie, then the
/// browser's `Accept-Language`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Zh,
}

pub const LANG_COOKIE: &str = "ragway_console_lang";

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }

    fn parse(code: &str) -> Option<Lang> {
        match code.trim().to_ascii_lowercase().as_str() {
            "en" => Some(Lang::En),
            "zh" => Some(Lang::Zh),
            _ => None,
        }
    }

    pub fn of(asked: Option<&str>, headers: &HeaderMap) -> Lang {
        if let Some(lang) = asked.and_then(Lang::parse) {
            return lang;
        }
        if let Some(lang) = super::cookie(headers, LANG_COOKIE).and_then(Lang::parse) {
            return lang;
        }
        let accepted = headers
            .get(axum::http::header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // The first language named decides (quality values are rarely reordered).
        match accepted.trim_start().to_ascii_lowercase().starts_with("zh") {
            true => Lang::Zh,
            false => Lang::En,
        }
    }
}

/// Every string a page shows, in both languages: key, English, Chinese.
#[rustfmt::skip]
const TEXT: &[(&str, &str, &str)] = &[
    ("title", "ragway console", "ragway 控制台"),
    ("sign_in", "Sign in", "登录"),
    ("sign_out", "Sign out", "退出"),
    ("key", "Admin key or API key", "管理密钥或 API 密钥"),
    ("key_hint", "The admin key sees everything; an API key sees its own tenant.", "管理密钥可查看全部；API 密钥只能查看其所属租户。"),
    ("wrong_key", "That key is not valid here.", "该密钥无效。"),
    ("no_keys", "No key can sign in: set auth.admin_key_env (or client keys) first.", "尚无可登录的密钥：请先设置 auth.admin_key_env（或客户端密钥）。"),
    ("overview", "Overview", "总览"),
    ("signed_in_admin", "Signed in with the admin key", "已使用管理密钥登录"),
    ("signed_in_tenant", "Signed in for tenant", "已登录租户"),
    ("requests_per_s", "Requests/s", "请求/秒"),
    ("latency_p50", "Latency p50", "延迟 p50"),
    ("latency_p99", "Latency p99", "延迟 p99"),
    ("errors", "Errors by class", "按类别的错误"),
    ("failovers", "Failovers", "故障转移"),
    ("local_share", "Local-model share", "本地模型占比"),
    ("cache_hits", "Cache hit ratio", "缓存命中率"),
    ("breakers", "Circuit breakers", "熔断器"),
    ("closed", "closed", "关闭"),
    ("half_open", "half-open", "半开"),
    ("open", "open", "打开"),
    ("since_start", "since start", "自启动以来"),
    ("live", "live, every 2 s", "实时，每 2 秒"),
    ("admin_view", "The gateway-wide figures are the admin's view; your tenant's usage and spend will be on the usage page.", "网关整体数据仅管理员可见；租户的用量与花费将在用量页面提供。"),
    ("keys", "Keys", "密钥"),
    ("keys_and_tenants", "Keys and tenants", "密钥与租户"),
    ("new_key", "New key", "新建密钥"),
    ("tenant", "Tenant", "租户"),
    ("tenants", "Tenants", "租户"),
    ("key_name", "Name", "名称"),
    ("status", "Status", "状态"),
    ("budget", "Budget", "预算"),
    ("tenant_budget", "Tenant budget", "租户预算"),
    ("period", "Period", "周期"),
    ("per_day", "per day", "每天"),
    ("per_week", "per week", "每周"),
    ("per_month", "per month", "每月"),
    ("rpm", "Requests/min", "每分钟请求数"),
    ("limits", "Limits", "限额"),
    ("tpm", "Tokens/min", "每分钟令牌数"),
    ("save_tenant", "Set the tenant's limits", "设置租户限额"),
    ("tenant_hint", "A tenant's limits and budget are shared by all its keys; a key never gets more than its tenant. Saving replaces the tenant's settings.", "租户的限额与预算由其所有密钥共享，单个密钥不会超过租户。保存会替换该租户的设置。"),
    ("create", "Create", "创建"),
    ("key_once", "The new key, shown this once: copy it now.", "新密钥仅显示这一次，请立即复制。"),
    ("copy", "Copy", "复制"),
    ("copied", "Copied", "已复制"),
    ("rotate", "Rotate", "轮换"),
    ("revoke", "Revoke", "吊销"),
    ("confirm_revoke", "Revoke this key? Calls with it are refused from now on.", "确定吊销该密钥？此后使用它的调用将被拒绝。"),
    ("no_budget", "none", "无"),
    ("spent_of", "spent of", "已用，共"),
    ("keys_unmanaged", "Keys are managed with [governance] in the config; this gateway has fixed keys only.", "密钥需在配置的 [governance] 中启用管理；本网关只有固定密钥。"),
    ("audit", "Audit", "审计"),
    ("request_id", "Request id", "请求 ID"),
    ("key_id", "Key id", "密钥 ID"),
    ("outcome", "Outcome", "结果"),
    ("any", "any", "全部"),
    ("since", "Since", "起始"),
    ("until", "Until", "截止"),
    ("rows", "Rows", "行数"),
    ("search", "Search", "搜索"),
    ("export_csv", "Export CSV", "导出 CSV"),
    ("verify_chain", "Verify the chain", "校验哈希链"),
    ("chain_ok", "Intact:", "完整："),
    ("chain_bad", "BROKEN:", "已损坏："),
    ("time", "Time", "时间"),
    ("route", "Route", "路由"),
    ("model", "Model", "模型"),
    ("tokens", "Tokens", "令牌"),
    ("latency", "Latency", "延迟"),
    ("row", "Row", "记录"),
    ("no_rows", "No audit rows match.", "没有匹配的审计记录。"),
    ("usage", "Usage", "用量"),
    ("usage_and_spend", "Usage and spend", "用量与花费"),
    ("group_by", "By", "分组"),
    ("target", "Target", "目标"),
    ("day", "Day (UTC)", "日期（UTC）"),
    ("last_day", "last 24 hours", "最近 24 小时"),
    ("last_week", "last 7 days", "最近 7 天"),
    ("last_month", "last 30 days", "最近 30 天"),
    ("all_time", "all time", "全部"),
    ("show", "Show", "显示"),
    ("group", "Group", "分组"),
    ("requests", "Requests", "请求数"),
    ("prompt_tokens", "Prompt tokens", "输入令牌"),
    ("cached_tokens", "Cached", "缓存命中令牌"),
    ("completion_tokens", "Answer tokens", "输出令牌"),
    ("cost", "Cost", "花费"),
    ("share", "Share of cost", "花费占比"),
    ("tokens_per_unit", "Tokens per currency unit", "每单位货币令牌数"),
    ("total", "Total", "合计"),
    ("unnamed", "(none)", "（无）"),
    ("no_usage", "No spending calls in this period.", "该时段没有计费调用。"),
    ("usage_hint", "From the audit trail: every call to /v1/chat/completions, /v1/embeddings and the playground, refused ones too, at the configured prices.", "数据来自审计记录：所有 /v1/chat/completions、/v1/embeddings 与试用页的调用（含被拒绝的），按配置的价格计算。"),
    ("providers", "Providers", "供应商"),
    ("breaker", "Breaker", "熔断器"),
    ("failure_streak", "Failures in a row", "连续失败"),
    ("retry_in", "Probes in", "探测倒计时"),
    ("attempts", "Attempts since start", "启动以来的尝试"),
    ("in_flight", "In flight", "进行中"),
    ("reset", "Reset", "重置"),
    ("recent_errors", "Failed attempts among the latest 200 calls", "最近 200 次调用中失败的尝试"),
    ("error", "Error", "错误"),
    ("no_errors", "None (or no audit trail).", "无（或未启用审计记录）。"),
    ("providers_hint", "A reset closes the breaker on this replica; the others keep their own.", "重置只关闭本副本的熔断器；其他副本各自保持。"),
    ("providers_admin_view", "Providers and their breakers are the admin's view.", "供应商及其熔断器仅管理员可见。"),
    ("documents", "Documents", "文档"),
    ("retrieval_off", "Retrieval is not configured on this gateway ([retrieval] in the config): there are no documents to manage.", "本网关未配置检索（配置中的 [retrieval]），没有可管理的文档。"),
    ("collection", "Collection", "集合"),
    ("all_collections", "all collections", "全部集合"),
    ("default_collection", "the default", "默认集合"),
    ("upload", "Upload", "上传"),
    ("drop_here", "Drop files here (text, Markdown, HTML, JSON, JSON lines, PDF)", "将文件拖放到这里（文本、Markdown、HTML、JSON、JSON Lines、PDF）"),
    ("choose_files", "or choose files", "或选择文件"),
    ("stored", "stored", "已存入"),
    ("unchanged", "already there, unchanged", "已存在，未改变"),
    ("document_id", "Document", "文档"),
    ("title", "Title", "标题"),
    ("chunks", "Chunks", "分块"),
    ("ingested", "Ingested (UTC)", "入库时间（UTC）"),
    ("delete", "Delete", "删除"),
    ("confirm_delete", "Delete this document? Answers stop citing it at once.", "确定删除该文档？回答将立即不再引用它。"),
    ("no_documents", "No documents.", "没有文档。"),
    ("name_tenant", "Name the tenant first.", "请先填写租户。"),
    ("ask", "Ask", "提问"),
    ("ask_hint", "The passages a question finds, best first, as retrieval ranks them. Marked relevant: found by one of its words, or close enough in meaning (retrieval.min_score); grounding takes the first of those within its budget. No model is called.", "问题检索到的段落，按检索排序。标为相关的：包含问题中的词，或语义足够接近（retrieval.min_score）；生成时按预算取前几段。此处不调用模型。"),
    ("question", "Question", "问题"),
    ("no_passages", "No passage matches.", "没有匹配的段落。"),
    ("relevant", "relevant", "相关"),
    ("not_relevant", "below the threshold", "低于阈值"),
    ("playground", "Playground", "试用"),
    ("retrieval", "Retrieval", "检索"),
    ("alias_default", "as the alias says", "按别名设置"),
    ("on", "on", "开"),
    ("off", "off", "关"),
    ("stream", "Stream", "流式"),
    ("temperature", "Temperature", "温度"),
    ("provider_default", "default", "默认"),
    ("new_conversation", "New conversation", "新对话"),
    ("message_hint", "Your message (Ctrl+Enter sends)", "输入消息（Ctrl+Enter 发送）"),
    ("send", "Send", "发送"),
    ("stop", "Stop", "停止"),
    ("stopped", "(stopped)", "（已停止）"),
    ("cache", "Cache", "缓存"),
    ("attempts_made", "Attempts", "尝试次数"),
    ("citations", "Citations", "引用"),
    ("pii_replaced", "Personal data replaced before the provider saw it", "发送给供应商前已替换的个人信息"),
    ("no_pii", "No personal data found in the conversation.", "对话中未发现个人信息。"),
    ("pii_unknown", "Which personal data was replaced is read from the audit trail, which is not configured or not readable.", "替换了哪些个人信息需从审计记录读取，但审计未配置或不可读。"),
    ("sent_as", "Your message as sent", "实际发送的消息"),
    ("playground_hint", "Every message goes through the whole pipeline under the signed-in key (the admin: the tenant named): limits and budgets, personal data, cache, retrieval, failover, audit. It is billed like any call.", "每条消息都以当前登录的密钥（管理员：所填租户）走完整流程：限额与预算、个人信息、缓存、检索、故障转移、审计，并像普通调用一样计费。"),
    ("no_aliases", "This key may use no chat model.", "该密钥没有可用的对话模型。"),
    ("language", "中文", "English"),
];

/// One string of `lang` (the key itself when there is none).
pub fn text(lang: Lang, key: &'static str) -> &'static str {
    TEXT.iter()
        .find(|(k, _, _)| *k == key)
        .map_or(key, |(_, en, zh)| match lang {
            Lang::En => en,
            Lang::Zh => zh,
        })
}

/// The strings of `lang`, by key.
fn texts(lang: Lang) -> Value {
    TEXT.iter()
        .map(|(key, en, zh)| {
            let text = match lang {
                Lang::En => *en,
                Lang::Zh => *zh,
            };
            ((*key).to_owned(), Value::from(text))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn templates() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        for (name, source) in [
            ("layout.html", include_str!("templates/layout.html")),
            ("sign_in.html", include_str!("templates/sign_in.html")),
            ("nav.html", include_str!("templates/nav.html")),
            ("overview.html", include_str!("templates/overview.html")),
            ("keys.html", include_str!("templates/keys.html")),
            ("audit.html", include_str!("templates/audit.html")),
            ("usage.html", include_str!("templates/usage.html")),
            ("providers.html", include_str!("templates/providers.html")),
            ("documents.html", include_str!("templates/documents.html")),
            ("playground.html", include_str!("templates/playground.html")),
        ] {
            env.add_template(name, source)
                .expect("the console's templates are valid");
        }
        env
    })
}

/// `template` rendered with `context` and the strings of `lang` (as `t`).
pub fn render(template: &str, lang: Lang, mut context: Value) -> String {
    context["t"] = texts(lang);
    context["lang"] = lang.code().into();
    context["other_lang"] = match lang {
        Lang::En => "zh",
        Lang::Zh => "en",
    }
    .into();
    templates()
        .get_template(template)
        .and_then(|t| t.render(&context))
        .unwrap_or_else(|error| {
            tracing::error!(%error, template, "a console page failed to render");
            "<!doctype html><title>ragway</title><p>This page failed to render.</p>".to_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_renders_in_both_languages_and_escapes() {
        for lang in [Lang::En, Lang::Zh] {
            let page = render(
                "sign_in.html",
                lang,
                serde_json::json!({"token": "\"><script>", "error": null, "can_sign_in": true}),
            );
            assert!(page.contains("&quot;&gt;&lt;script&gt;"), "{page}");
            assert!(!page.contains("\"><script>"));
            let page = render(
                "overview.html",
                lang,
                serde_json::json!({"csrf": "t", "tenant": "<b>", "admin": false}),
            );
            assert!(page.contains("&lt;b&gt;"), "{page}");
            assert!(
                !page.contains("console.js"),
                "no live data for a client key"
            );
            let context =
                serde_json::json!({"page": "keys", "csrf": "\"x", "tenant": "<b>", "admin": false});
            let page = render("keys.html", lang, context);
            assert!(
                page.contains("&lt;b&gt;") && page.contains("&quot;x"),
                "{page}"
            );
            assert!(page.contains("data-admin=\"false\"") && !page.contains("id=\"new-key\""));
            assert!(
                page.contains("href=\"/console/keys\" aria-current=\"page\""),
                "{page}"
            );
            let context = serde_json::json!({"page": "keys", "csrf": "x", "admin": true});
            let page = render("keys.html", lang, context);
            let per_day = format!(">{}</option>", text(lang, "per_day"));
            assert_eq!(
                page.matches(&per_day).count(),
                2,
                "both forms' periods: {page}"
            );
        }
        assert!(render("sign_in.html", Lang::Zh, serde_json::json!({})).contains("登录"));
    }

    #[test]
    fn the_language_follows_the_query_then_the_cookie_then_the_browser() {
        let mut headers = HeaderMap::new();
        assert_eq!(Lang::of(None, &headers), Lang::En);
        headers.insert(
            "accept-language",
            "zh-CN,zh;q=0.9,en;q=0.8".parse().unwrap(),
        );
        assert_eq!(Lang::of(None, &headers), Lang::Zh);
        headers.insert("cookie", "a=b; ragway_console_lang=en".parse().unwrap());
        assert_eq!(Lang::of(None, &headers), Lang::En);
        assert_eq!(Lang::of(Some("zh"), &headers), Lang::Zh);
        assert_eq!(Lang::of(Some("xx"), &headers), Lang::En);
    }
}
