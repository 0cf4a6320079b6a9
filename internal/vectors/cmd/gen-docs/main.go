// Command gen-docs writes docs/reasons.md from testdata/reasons.json:
//
//	go run ./internal/vectors/cmd/gen-docs
package main

import (
	"log"
	"os"

	"github.com/mandatehq/mandate/internal/vectors"
)

func main() {
	f, err := vectors.Reasons()
	if err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(vectors.ReasonsDocPath(), vectors.RenderReasonsDoc(f), 0o644); err != nil {
		log.Fatal(err)
	}
}
