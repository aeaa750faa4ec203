"""RabbitMQ consumers of the billing system's events: topology (``topology``), reading a
message (``codec``), one handler per event type calling the application functions the gRPC
servicer calls (``handlers``), what a failure deserves (``failures``), and the running part
that settles every message once (``runner``). README "Events" describes the contract."""
