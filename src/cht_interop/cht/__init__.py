"""The CHT client and the CHT app configuration the LTFU workflow needs."""
