"""The console's widgets and screens, one per module: header, Now panel, budget meters, val_bpb
chart, experiment detail, query results, the modals (confirm, prompt) and help."""
