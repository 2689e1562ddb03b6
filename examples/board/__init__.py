"""The example kanban board: ``trio-channels serve examples.board.app:endpoint``."""
