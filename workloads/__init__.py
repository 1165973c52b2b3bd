"""The load side of a recording: workload files (`spec`, `presets/`), when requests are sent
(`arrivals`), what they ask for (`distributions`), the asyncio generator (`loadgen`) and its bridge
from the engine's thread (`stream`), load over HTTP (`http_target`), client-side figures
(`metrics`), and the session that wires engine, generator and trace together (`run`). The serving
front (`serve`) speaks OpenAI's protocol (`openai_api`, `chat`, `tokenizer`) and exposes Prometheus
metrics read from its trace's events (`server_metrics`)."""
