"""Every metric name and alert threshold the rules and the dashboard use, in one place.

Ray exports application metrics with a `ray_` prefix, and vLLM's `vllm:` names arrive as
`ray_vllm_` (see FACTS.md); the gateway's `paliserve_*` metrics arrive as `ray_paliserve_*`.
Prometheus names a counter `<name>_total` and a histogram's series `<name>_bucket|_sum|_count`;
tests/k8s/test_k8s_metric_names.py checks every name here against the code and README's table.
"""

REQUESTS = "ray_paliserve_requests_total"  # counter {tenant, model, status}
TTFT_BUCKET = "ray_paliserve_time_to_first_token_seconds_bucket"  # histogram {tenant, model}
REJECTIONS = "ray_paliserve_rejections_total"  # counter {tenant, reason}
# usage showback (paliserve usage): counters {tenant, model}
PROMPT_TOKENS = "ray_paliserve_prompt_tokens_total"
IMAGE_TOKENS = "ray_paliserve_image_tokens_total"
GENERATION_TOKENS = "ray_paliserve_generation_tokens_total"
ENGINE_SECONDS = "ray_paliserve_engine_seconds_total"  # engine busy time apportioned by tokens
ERROR_STATUS = "5.."  # regex over `status` that counts as an error

KV_CACHE_USAGE = "ray_vllm_kv_cache_usage_perc"  # gauge 0..1 {model_name}
REQUESTS_WAITING = "ray_vllm_num_requests_waiting"  # gauge {model_name}
ENGINE_TTFT_BUCKET = "ray_vllm_time_to_first_token_seconds_bucket"  # histogram {model_name}

RATE_WINDOW = "5m"
TTFT_FOR = "10m"
KV_CACHE_HIGH = 0.9
KV_CACHE_FOR = "10m"
ERROR_RATIO = 0.05
ERROR_FOR = "5m"
# `reason` of a tenant's own quota refusing a request (429; serve/tenancy/quotas.py). The gateway's
# other reasons are not quota: unauthenticated, forbidden, unknown_model (4xx, the client's), and
# overloaded, quota_authority_unavailable (503s, in the error-rate alert); the dashboard shows all.
QUOTA_REASONS = ("max_concurrency", "requests_per_min", "tokens_per_min")
QUOTA_REJECTED_RATIO = 0.1  # of a tenant's requests, sustained: its limits are below its traffic
QUOTA_REJECTED_FOR = "15m"
