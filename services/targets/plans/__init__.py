"""Plans and their task ledgers, inside targets: plan files (README.md), tasks with progress lines
per township, submission with evidence and acceptance, overdue tasks, and the views over them.
`api.mount(app, runtime, clock)` adds them to targets' app."""
