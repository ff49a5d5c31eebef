module preview-engine/stack/pause

go 1.26
