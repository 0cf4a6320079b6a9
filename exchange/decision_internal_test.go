package exchange

import (
	"testing"
	"unsafe"
)

// The evaluation is the decision's one allocation of its own, in place of the audit record
// the exchange allocated before the table existed; what only Explain needs stays behind
// pointers so it keeps to the 768-byte size class (BenchmarkExchange's B/op shows a slip).
func TestEvaluationSize(t *testing.T) {
	if n := unsafe.Sizeof(evaluation{}); n > 768 {
		t.Errorf("evaluation is %d bytes, over the 768-byte size class", n)
	}
}
