"""The CHT sandbox: a local emulator of the CHT API subset the LTFU workflow touches."""
