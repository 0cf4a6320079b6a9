package api

import (
	"context"

	"github.com/mandatehq/mandate/storage"
)

func (s *server) ListKeys(ctx context.Context, _ ListKeysRequestObject) (ListKeysResponseObject, error) {
	keys, err := s.keys.List(ctx)
	if err != nil {
		return nil, err
	}
	out := ListKeys200JSONResponse{Items: make([]Key, 0, len(keys))}
	for i := range keys {
		out.Items = append(out.Items, keyOut(&keys[i]))
	}
	return out, nil
}

// RotateKeys rotates through KeyAdmin, which runs its own transaction, so the audit record
// follows in a second one: a rotation whose record failed to write answers 500 and is
// logged, and the key it made is in the key list all the same.
func (s *server) RotateKeys(ctx context.Context, _ RotateKeysRequestObject) (RotateKeysResponseObject, error) {
	k, err := s.keys.Rotate(ctx)
	if err != nil {
		return nil, err
	}
	err = s.audit(ctx, s.store, EventKeysRotate, storage.AuditRecord{},
		map[string]any{"kid": k.KID, "alg": k.Alg, "status": k.Status})
	if err != nil {
		s.log.ErrorContext(ctx, "admin api: key rotated but its audit record failed", "kid", k.KID, "error", err.Error())
		return nil, err
	}
	return RotateKeys200JSONResponse(keyOut(k)), nil
}

func keyOut(k *storage.SigningKey) Key {
	return Key{
		Kid:         k.KID,
		Alg:         KeyAlg(k.Alg),
		Status:      KeyStatus(k.Status),
		CreatedAt:   k.CreatedAt.UTC(),
		ActivatesAt: k.ActivatesAt.UTC(),
		RetiredAt:   timeIf(k.RetiredAt),
		RemoveAt:    timeIf(k.RemoveAt),
	}
}
