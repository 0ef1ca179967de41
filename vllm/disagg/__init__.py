"""The disaggregated prefill/decode proxy (`vllm proxy`).

One client request becomes two upstream requests sharing one request id: a one-token
prefill on a prefill instance that keeps its KV cache for a remote decoder, and the full
request on a decode instance that pulls that KV cache and streams the answer back.

Modules: `proxy_config` (settings), `instances` (registry, health flags, load),
`health` (background polling), `request_bodies` (what P and D receive), `upstream`
(relaying one upstream response), `routing` (the generate handler), `proxy_metrics`,
`errors` (error bodies, as JSON or as a stream's last event), `auth` (API keys),
`proxy_app` (the aiohttp app and server), `cli` (flags and main).
"""
