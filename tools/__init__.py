"""Operator tools: client-side programs for a running tritonserver (warmup, load_test, locustfile, power_monitor,
compare_models) and the modules they share. aiperf/ holds the aiperf recipe's template and tokenizer
(docs/tools.md).

The tools talk to the server only (tritonclient gRPC/HTTP, the health API, the Prometheus endpoint) and never
import gptserve, so they run on any machine with the client packages. Shared modules, one concern each:

  endpoints   where the server is: --url / --metrics-url, else HOST, GRPC_PORT, HTTP_PORT, METRICS_PORT
  readiness   the visible wait for a live server and a READY model
  client      tritonclient modules, model configuration, error codes
  payload     request inputs, requested outputs, token counting of responses, random prompts
  generator   one blocking generation at a time (unary or over the gRPC stream)
  metrics     scraping and reading the Prometheus endpoint (prometheus_client's parser)
  energy      joules over a window (Triton's counter or local NVML) and tokens per joule
  stats       percentiles and summaries (numpy)
  slo         SLO parsing
  saturation  whether the client itself kept up (late sends, its CPU, the host's CPU)
  plots       the PNGs (load test report, model-comparison sweep)
  cli         exit codes, errors, verdict lines, JSON output
"""
