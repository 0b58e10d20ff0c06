"""What the tests and the load tests share: a served instance in a subprocess (`serving`), the live
test application's constants and client helpers (`live`), a local Prometheus, the Helm renderer,
generated LoRA adapters, multi-turn conversations, and the scripted engine of the unit tier
(`fake_engine`). Never imported by services/."""
