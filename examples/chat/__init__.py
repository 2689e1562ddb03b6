"""The example chat app: ``trio-channels serve examples.chat.app:endpoint``."""
