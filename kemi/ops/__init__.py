"""Operations code (launcher, RPC and ng clients, drill): I/O lives here, never in kemi.core."""
