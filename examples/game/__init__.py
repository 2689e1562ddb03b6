"""The example multiplayer game: ``trio-channels serve examples.game.app:endpoint``."""
