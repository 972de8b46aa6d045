"""The durable outbox: jobs written in the business transaction, delivered by workers after commit."""
