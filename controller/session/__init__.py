"""The governed session: the loop that sequences steps, the steps of one experiment, the one
recorder that writes events and status, and the pure replay a resume starts from."""
