"""Local stand-ins for the outside world: a static web server, a generated site farm, a fake
OpenAI-compatible embeddings server, all on loopback.

They live in the library, not under tests/, for two reasons: the demo job (`jobs.demo`)
serves the bundled site with `devserver`, and the benchmarks (bench/) and the tests share the
same doubles, so a benchmark measures against the very server the tests check, and bench never
imports tests. Nothing in the pipeline itself imports this package.

- `devserver`: serve a folder (a saved site) the way a plain web host does;
- `sitefarm`: generated Persian sites of any size, one port each, with deliberate faults;
- `openai_server`: `POST /v1/embeddings` with a provider's latency, limits and failures.
"""
