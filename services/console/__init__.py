"""The officials' web console (zh-CN): see app.py."""
