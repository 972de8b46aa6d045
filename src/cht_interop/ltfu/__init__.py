"""The LTFU mediator workflow behind /mediator/*."""
