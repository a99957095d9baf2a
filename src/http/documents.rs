//! `/v1/documents`: a tenant's documents for retrieval. A client key manages its
//! own tenant's documents; the admin key names the tenant (`tenant` field or query
//! parameter). Off (404) while `[retrieval]` is not configured.
//!
//! - `POST /v1/documents`: JSON `{"text", "id"?, "title"?, "source"?, "collection"?,
//!   "format"?}`, or `multipart/form-data` with a `file` part (its name's extension
//!   gives the format, the `charset` of its content type the character set) and
//!   the same optional fields as text parts. 201 when stored, 200 when the same
//!   document was already there.
//! - `GET /v1/documents?limit=N`: the tenant's documents.
//! - `DELETE /v1/documents/{id}`: removes one (ids may hold `/`); or
//!   `DELETE /v1/documents?id=…`, for an id a URL path cannot carry as it is (a
//!   `..` segment, which clients resolve away before sending).
//! - `POST /v1/search`: JSON `{"question", "collection"?, "limit"?}`: the
//!   passages a question finds, best first, with their scores (what grounding would
//!   choose from), without calling a model.
//!
//! Who is asking is settled by [`principal`] (a bearer key) or by the console's
//! session, before a handler runs: each reads the [`Principal`] it was given.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::error::GatewayError;
use crate::retrieve::corpus::{Corpus, Mode, NewDocument};
use crate::retrieve::extract::{Format, charset};
use crate::state::AppState;

const DEFAULT_LIST: usize = 1000;
const MAX_LIST: usize = 10_000;
/// Passages a search returns by default, and at most.
const DEFAULT_PASSAGES: usize = 5;
const MAX_PASSAGES: usize = 20;
/// The longest question a search takes, in characters: embedding reads 512 tokens
/// at most, and cutting words costs in proportion to the text.
const MAX_QUESTION_CHARS: usize = 2_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    tenant: Option<String>,
    limit: Option<usize>,
    /// The document to delete, when the path does not name it.
    id: Option<String>,
}

/// The JSON form of an upload.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    #[serde(default)]
    text: String,
    id: Option<String>,
    title: Option<String>,
    source: Option<String>,
    collection: Option<String>,
    /// `text`, `markdown`, `html`, `json` or `jsonl`; `markdown` by default.
    format: Option<String>,
    tenant: Option<String>,
    /// A multipart upload's file.
    #[serde(skip)]
    file: Option<FilePart>,
}

#[derive(Debug)]
struct FilePart {
    name: String,
    bytes: Bytes,
    /// The part's own `Content-Type`, which may name the file's character set.
    content_type: Option<String>,
}

/// Bounded as a hostile caller needs it to be: a tenant has at most
/// `retrieval.ingest_concurrency` documents in ingestion (more get 429 before their
/// body is read); each has `retrieval.ingest_timeout_secs` in all; and the work
/// stops when the client goes away (its future is dropped, and with it the guard
/// that cancels the embedding on its blocking thread) or the gateway shuts down.
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    params: Result<Query<Params>, QueryRejection>,
    request: Request,
) -> Result<(StatusCode, Json<Value>), GatewayError> {
    let corpus = corpus(&state)?;
    let retrieval = state.config.retrieval.as_ref().ok_or_else(off)?;
    let params = query(params)?;
    let headers = request.headers().clone();
    let _slot = corpus.admit(principal.name()).ok_or_else(|| GatewayError::TooManyRequests {
        message: format!(
            "{} documents are already being ingested for this caller; send this one when one of them is done",
            retrieval.ingest_concurrency
        ),
        retry_after: std::time::Duration::from_secs(5),
    })?;
    let stop = state.shutdown.child_token();
    let _stop_when_gone = stop.clone().drop_guard();
    let limit = retrieval.ingest_timeout;
    let work = async {
        let upload = read_upload(&state, &headers, request).await?;
        let tenant = principal.tenant(upload.tenant.as_deref().or(params.tenant.as_deref()))?;
        let doc = prepare(upload, retrieval).await?;
        Ok::<_, GatewayError>(corpus.ingest_until(&tenant, doc, &stop).await?)
    };
    let ingested = tokio::time::timeout(limit, work).await.map_err(|_| {
        GatewayError::Unavailable {
            message: format!(
                "the document was not ingested within {} s (retrieval.ingest_timeout_secs): split it, or send it again later",
                limit.as_secs()
            ),
            retry_after: std::time::Duration::from_secs(5),
        }
    })??;
    let status = match ingested.unchanged {
        true => StatusCode::OK,
        false => StatusCode::CREATED,
    };
    let mut body = json!(ingested);
    body["object"] = json!("document");
    Ok((status, Json(body)))
}

/// The upload as a document: its format, checked size and extracted text.
async fn prepare(
    upload: Upload,
    retrieval: &crate::config::RetrievalConfig,
) -> Result<NewDocument, GatewayError> {
    let Upload {
        text,
        id,
        title,
        source,
        collection,
        format,
        file,
        ..
    } = upload;
    let (format, charset, bytes, name) = match file {
        Some(FilePart {
            name,
            bytes,
            content_type,
        }) => {
            let format = Format::of_name(&name).ok_or_else(|| {
                GatewayError::invalid(
                    format!(
                        "`{name}` is not a document type ragway reads; use one of: {}",
                        Format::EXTENSIONS
                    ),
                    Some("file".to_owned()),
                )
            })?;
            let charset = charset::of_media_type(content_type.as_deref().unwrap_or(""))
                .map_err(|e| GatewayError::invalid(e, Some("file".to_owned())))?;
            (format, charset, bytes, Some(name))
        }
        None => {
            let format = match format.as_deref().unwrap_or("markdown") {
                "text" | "txt" => Format::Text,
                "markdown" | "md" => Format::Markdown,
                "html" => Format::Html,
                "json" => Format::Json,
                "jsonl" => Format::JsonLines,
                other => {
                    return Err(GatewayError::invalid(
                        format!("`{other}` is not one of: text, markdown, html, json, jsonl"),
                        Some("format".to_owned()),
                    ));
                }
            };
            // JSON carried the text as Unicode: a `<meta charset>` in it is stale.
            let utf8 = Some(encoding_rs::UTF_8);
            (format, utf8, Bytes::from(text.into_bytes()), None)
        }
    };
    if bytes.len() > retrieval.max_document_bytes {
        return Err(GatewayError::PayloadTooLarge {
            limit: retrieval.max_document_bytes,
        });
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        let param = if name.is_some() { "file" } else { "text" };
        return Err(GatewayError::invalid(
            "the document is empty",
            Some(param.to_owned()),
        ));
    }
    let collection = collection.unwrap_or_else(|| retrieval.default_collection.clone());
    // Extraction and hashing are CPU work in proportion to the document.
    let doc = tokio::task::spawn_blocking(move || {
        let id = id
            .or_else(|| name.clone())
            .unwrap_or_else(|| content_id(&bytes));
        let source = source.or(name).unwrap_or_else(|| id.clone());
        NewDocument::from_bytes(id, collection, source, format, charset, &bytes, title)
    })
    .await
    .map_err(|e| GatewayError::Internal(e.to_string()))??;
    Ok(doc)
}

pub async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let corpus = corpus(&state)?;
    let params = query(params)?;
    let tenant = principal.tenant(params.tenant.as_deref())?;
    let limit = params.limit.unwrap_or(DEFAULT_LIST).clamp(1, MAX_LIST);
    let documents = corpus.documents(&tenant, limit).await?;
    Ok(Json(json!({ "object": "list", "data": documents })))
}

pub async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    id: Result<Path<String>, PathRejection>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let corpus = corpus(&state)?;
    let params = query(params)?;
    let Path(id) = id.map_err(|e| GatewayError::invalid(e.body_text(), Some("id".to_owned())))?;
    remove(&corpus, &principal, params, id).await
}

/// `DELETE /v1/documents?id=…`.
pub async fn delete_named(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    params: Result<Query<Params>, QueryRejection>,
) -> Result<Json<Value>, GatewayError> {
    let corpus = corpus(&state)?;
    let mut params = query(params)?;
    let id = params
        .id
        .take()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| GatewayError::invalid("name the document: `?id=`", Some("id".to_owned())))?;
    remove(&corpus, &principal, params, id).await
}

async fn remove(
    corpus: &Corpus,
    principal: &Principal,
    params: Params,
    id: String,
) -> Result<Json<Value>, GatewayError> {
    let tenant = principal.tenant(params.tenant.as_deref())?;
    let removed = corpus.delete(&tenant, &id).await?;
    if removed == 0 {
        return Err(GatewayError::NotFound(format!("document `{id}`")));
    }
    Ok(Json(
        json!({ "object": "document.deleted", "id": id, "deleted": true, "chunks": removed }),
    ))
}

/// A search's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Search {
    question: String,
    collection: Option<String>,
    limit: Option<usize>,
    tenant: Option<String>,
}

/// `POST /v1/search`: the tenant's passages for a question, best first,
/// as hybrid retrieval ranks them. `relevant` says whether grounding would take a
/// passage (found by one of the question's words, or close enough in meaning:
/// `retrieval.min_score`); grounding then keeps the first `retrieval.top_k` of
/// those within its token budget.
pub async fn search(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, GatewayError> {
    let corpus = corpus(&state)?;
    let retrieval = state.config.retrieval.as_ref().ok_or_else(off)?;
    let asked: Search =
        super::body::parse_json(&headers, body, state.config.server.max_body_bytes)?;
    let tenant = principal.tenant(asked.tenant.as_deref())?;
    let question = asked.question.trim();
    if question.is_empty() {
        return Err(GatewayError::invalid(
            "ask a question",
            Some("question".to_owned()),
        ));
    }
    if question.chars().count() > MAX_QUESTION_CHARS {
        return Err(GatewayError::invalid(
            format!("a question is at most {MAX_QUESTION_CHARS} characters"),
            Some("question".to_owned()),
        ));
    }
    let limit = match asked.limit.unwrap_or(DEFAULT_PASSAGES) {
        n @ 1..=MAX_PASSAGES => n,
        _ => {
            return Err(GatewayError::invalid(
                format!("`limit` is from 1 to {MAX_PASSAGES}"),
                Some("limit".to_owned()),
            ));
        }
    };
    let collection = asked.collection.filter(|c| !c.trim().is_empty());
    // The one admission point: a search embeds its question, so a client key's
    // limits hold here as for an embedding (the admin's searches are the admin's).
    let permit = match &principal {
        Principal::Client(caller) => {
            let call = crate::call::Call {
                request_id: "",
                caller,
                alias: state
                    .embedder
                    .as_ref()
                    .map_or("search", |(name, _)| name.as_str()),
                deadline: tokio::time::Instant::now() + retrieval.ingest_timeout,
                stream: false,
                cache_control: Default::default(),
                corpus_version: None,
            };
            let ask = crate::admit::admission::Ask {
                prompt_tokens: crate::tokens::text_tokens(question),
                max_output: Some(0),
            };
            Some(state.pipeline.admission.admit(&call, ask).await?)
        }
        Principal::Admin => None,
    };
    let found = corpus
        .search(
            &tenant,
            collection.as_deref(),
            question,
            Mode::Hybrid,
            limit,
        )
        .await;
    if let Some(permit) = permit {
        let used = crate::admit::admission::Used {
            prompt_tokens: crate::tokens::text_tokens(question),
            ..Default::default()
        };
        state.pipeline.admission.settle(permit, used).await;
    }
    let found = found?;
    let min_score = retrieval.defaults.min_score;
    let data: Vec<Value> = found
        .into_iter()
        .map(|p| {
            let relevant = p.keyword.is_some() || p.dense.is_some_and(|s| s >= min_score);
            let payload = p.hit.payload;
            json!({
                "object": "document.passage",
                "doc_id": payload.doc_id,
                "collection": payload.collection,
                "title": payload.title,
                "source": payload.source,
                "chunk": payload.chunk_index,
                "headings": payload.headings,
                "text": payload.text,
                "score": p.score,
                "dense": p.dense,
                "keyword": p.keyword,
                "relevant": relevant,
            })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

/// `POST /admin/tenants/{tenant}/reindex` (admin key): embeds the tenant's stored
/// documents again with the running embedder (see [`Corpus::reindex`]). It takes
/// one of the tenant's ingestion places, and stops when the caller goes away or
/// the gateway shuts down; stopped part-way, the tenant stays stale (searched by
/// keywords) and a second call embeds every document again. For a tenant too large
/// for one HTTP call, `ragway reindex --tenant` does the same offline.
pub async fn reindex(
    State(state): State<AppState>,
    tenant: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, GatewayError> {
    let corpus = corpus(&state)?;
    let Path(tenant) =
        tenant.map_err(|e| GatewayError::invalid(e.body_text(), Some("tenant".to_owned())))?;
    crate::admit::grant::check_tenant(&tenant)
        .map_err(|e| GatewayError::invalid(format!("{}: {}", e.field, e.message), Some(e.field)))?;
    let _slot = corpus
        .admit(&tenant)
        .ok_or_else(|| GatewayError::TooManyRequests {
            message: "the tenant's documents are being ingested as fast as it may: try again when \
                  they are done"
                .to_owned(),
            retry_after: std::time::Duration::from_secs(5),
        })?;
    let stop = state.shutdown.child_token();
    let _stop_when_gone = stop.clone().drop_guard();
    let done = corpus.reindex(&tenant, &stop).await?;
    let mut body = json!(done);
    body["object"] = json!("tenant.reindex");
    Ok(Json(body))
}

fn off() -> GatewayError {
    GatewayError::NotFound("/v1/documents (retrieval is not configured)".to_owned())
}

fn corpus(state: &AppState) -> Result<Arc<Corpus>, GatewayError> {
    state.corpus.clone().ok_or_else(off)
}

fn query(params: Result<Query<Params>, QueryRejection>) -> Result<Params, GatewayError> {
    params
        .map(|Query(p)| p)
        .map_err(|e| GatewayError::invalid(e.body_text(), None))
}

/// Settles who a `/v1/documents` request comes from (its bearer key) before the
/// handler reads anything, or answers 401.
pub async fn principal(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match Principal::of(&state, request.headers()) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// Who a documents request comes from.
#[derive(Debug, Clone)]
pub enum Principal {
    /// The admin key: acts for the tenant it names.
    Admin,
    /// A client key (or anyone, with authentication off): acts for its tenant,
    /// within its limits.
    Client(crate::call::Caller),
}

impl Principal {
    /// Whose share of the ingestion slots a request takes: the tenant of a client
    /// key; the admin, for the admin key (its tenant is named in the body).
    fn name(&self) -> &str {
        match self {
            Principal::Admin => "\0admin",
            Principal::Client(caller) => &caller.tenant,
        }
    }

    fn of(state: &AppState, headers: &HeaderMap) -> Result<Principal, GatewayError> {
        if super::admin::is_admin(state, headers) {
            return Ok(Principal::Admin);
        }
        let caller = super::auth::caller_of(&state.client_keys, headers)?;
        Ok(Principal::Client(caller))
    }

    /// The tenant the request acts for; `asked` is the one it names, if any.
    fn tenant(&self, asked: Option<&str>) -> Result<String, GatewayError> {
        let asked = asked.map(str::trim).filter(|t| !t.is_empty());
        match (self, asked) {
            (Principal::Admin, Some(tenant)) => Ok(tenant.to_owned()),
            (Principal::Admin, None) => Err(GatewayError::invalid(
                "with the admin key, name the tenant (`tenant`)",
                Some("tenant".to_owned()),
            )),
            (Principal::Client(own), Some(other)) if other != &*own.tenant => {
                Err(GatewayError::Forbidden(
                    "a client key manages only its own tenant's documents".to_owned(),
                ))
            }
            (Principal::Client(own), _) => Ok(own.tenant.to_string()),
        }
    }
}

async fn read_upload(
    state: &AppState,
    headers: &HeaderMap,
    request: Request,
) -> Result<Upload, GatewayError> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let limit = state
        .config
        .retrieval
        .as_ref()
        .map_or(0, |r| r.max_document_bytes);
    if media_type.starts_with("multipart/form-data") {
        let multipart = Multipart::from_request(request, state)
            .await
            .map_err(|e| GatewayError::invalid(e.body_text(), None))?;
        return read_multipart(multipart, limit).await;
    }
    if media_type.split(';').next().map(str::trim) == Some("application/json") {
        let body = Bytes::from_request(request, state).await;
        return super::body::parse_json(headers, body, limit);
    }
    Err(GatewayError::UnsupportedMediaType(
        "send a document as application/json or multipart/form-data".to_owned(),
    ))
}

async fn read_multipart(mut multipart: Multipart, limit: usize) -> Result<Upload, GatewayError> {
    let mut upload = Upload::default();
    let too_large = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            GatewayError::PayloadTooLarge { limit }
        } else if super::limits::timed_out(&e) {
            GatewayError::RequestTimeout
        } else {
            GatewayError::invalid(format!("cannot read the upload: {}", e.body_text()), None)
        }
    };
    while let Some(field) = multipart.next_field().await.map_err(too_large)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                let file_name = field.file_name().unwrap_or_default().to_owned();
                let content_type = field.content_type().map(str::to_owned);
                if file_name.is_empty() {
                    return Err(GatewayError::invalid(
                        "the `file` part needs a file name (its extension gives the type)",
                        Some("file".to_owned()),
                    ));
                }
                let bytes = field.bytes().await.map_err(too_large)?;
                upload.file = Some(FilePart {
                    name: file_name,
                    bytes,
                    content_type,
                });
            }
            "id" | "title" | "source" | "collection" | "tenant" => {
                let value = field.text().await.map_err(too_large)?;
                let slot = match name.as_str() {
                    "id" => &mut upload.id,
                    "title" => &mut upload.title,
                    "source" => &mut upload.source,
                    "collection" => &mut upload.collection,
                    _ => &mut upload.tenant,
                };
                *slot = Some(value);
            }
            other => {
                return Err(GatewayError::invalid(
                    format!(
                        "unknown part `{other}`: send `file` and optionally id, title, source, collection, tenant"
                    ),
                    Some(other.to_owned()),
                ));
            }
        }
    }
    if upload.file.is_none() {
        return Err(GatewayError::invalid(
            "the upload has no `file` part",
            Some("file".to_owned()),
        ));
    }
    Ok(upload)
}

/// The id of a document posted without one: from its text, so posting the same
/// text again is idempotent.
fn content_id(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex = crate::encode::hex(&digest[..8]);
    format!("doc-{hex}")
}
