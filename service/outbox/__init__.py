"""Getting the outbox out: the relay to RabbitMQ (``relay``) and the live WatchEvents stream
(``feed`` tails the table for the process, ``watch`` serves one watcher)."""
