//! Attribute names: OpenTelemetry semantic conventions (HTTP, network, error,
//! GenAI) and Hypergate's own `hypergate.*` keys, as constants, so that the
//! code filling spans and log records and the dashboards reading them agree.
//!
//! Depends on nothing.

/// HTTP method, e.g. `GET`.
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
/// The request path (canonical form).
pub const URL_PATH: &str = "url.path";
/// The matched route template.
pub const HTTP_ROUTE: &str = "http.route";
/// The response status code (integer).
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
/// The server's name as the client addressed it (the `Host`).
pub const SERVER_ADDRESS: &str = "server.address";
/// The server's port (integer), for client spans.
pub const SERVER_PORT: &str = "server.port";
/// The peer's address: the client for server spans, the upstream for client spans.
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
/// The class of error, e.g. `timeout`, `upstream_connect`, or a status code.
pub const ERROR_TYPE: &str = "error.type";
/// The RPC system of a call (`grpc`).
pub const RPC_SYSTEM: &str = "rpc.system";
/// A gRPC call's status code (integer).
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";

/// The Hypergate route name.
pub const HYPERGATE_ROUTE: &str = "hypergate.route";
/// The upstream cluster.
pub const HYPERGATE_CLUSTER: &str = "hypergate.cluster";
/// The deployed version the call went to (stable or canary).
pub const HYPERGATE_VERSION: &str = "hypergate.version";
/// The attempt number of an upstream call (integer; 0 for the first try).
pub const HYPERGATE_RETRY: &str = "hypergate.retry";
/// The request id (`x-request-id`).
pub const HYPERGATE_REQUEST_ID: &str = "hypergate.request_id";
/// How the call ended: `ok`, `client_aborted`, `rejected`, `upstream_error`,
/// `gateway_error` or `timeout`.
pub const HYPERGATE_OUTCOME: &str = "hypergate.outcome";
/// The authenticated consumer.
pub const HYPERGATE_CONSUMER: &str = "hypergate.consumer";
/// Retries made for the call (integer).
pub const HYPERGATE_RETRIES: &str = "hypergate.retries";
/// The call was served by a canary (boolean).
pub const HYPERGATE_CANARY: &str = "hypergate.canary";
/// Total latency at the gateway, in microseconds (integer; on log records).
pub const HYPERGATE_DURATION_US: &str = "hypergate.duration_us";
/// An LLM call's cost in US dollars (float, exact to the nano-dollar).
pub const HYPERGATE_LLM_COST_USD: &str = "hypergate.llm.cost_usd";
/// Provider attempts an LLM call made (integer).
pub const HYPERGATE_LLM_ATTEMPTS: &str = "hypergate.llm.attempts";
/// The LLM alias's target that answered (`provider/model`).
pub const HYPERGATE_LLM_TARGET: &str = "hypergate.llm.target";

/// The GenAI operation, e.g. `chat`, `embeddings`.
pub const GEN_AI_OPERATION_NAME: &str = "gen_ai.operation.name";
/// The GenAI provider, e.g. `openai`, `anthropic`.
pub const GEN_AI_PROVIDER_NAME: &str = "gen_ai.provider.name";
/// The model the request asked for.
pub const GEN_AI_REQUEST_MODEL: &str = "gen_ai.request.model";
/// The model that answered.
pub const GEN_AI_RESPONSE_MODEL: &str = "gen_ai.response.model";
/// Prompt tokens (integer).
pub const GEN_AI_USAGE_INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
/// Completion tokens (integer).
pub const GEN_AI_USAGE_OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
/// Time to the first streamed token, in seconds (float). The semantic
/// conventions define this name for a histogram metric; Hypergate also sets it
/// on the span so that one trace shows it.
pub const GEN_AI_SERVER_TIME_TO_FIRST_TOKEN: &str = "gen_ai.server.time_to_first_token";
