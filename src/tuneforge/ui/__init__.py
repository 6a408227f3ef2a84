"""`tuneforge ui`: a small web dashboard over a runs folder (see tuneforge.ui.app and docs/ui.md)."""
