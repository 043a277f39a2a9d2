"""The Function App's triggers: thin translations between Functions bindings and `kvfirewall`."""
