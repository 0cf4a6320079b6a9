package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mandatehq/mandate/secret"
	"github.com/mandatehq/mandate/storage"
)

// AdminClientID is the client Bootstrap creates.
const AdminClientID = "mandate-admin"

// MinBootstrapSecretLength is the shortest preset admin secret (MANDATE_BOOTSTRAP_ADMIN_SECRET).
const MinBootstrapSecretLength = 32

// Bootstrap creates the admin client on a store that was never bootstrapped, so a new
// deployment can be administered at all. It happens once per store (SPEC §7): the store's
// bootstrap marker is set in the transaction that creates the client, so a mandate-admin
// deleted later stays deleted. It uses presetSecret when given (for automation; at least
// MinBootstrapSecretLength characters) and otherwise generates one; secretOut is the secret,
// to be shown once, and created says whether this call made the client. When several
// replicas start together, one creates it and the others see created=false.
func Bootstrap(ctx context.Context, store storage.Store, h *secret.Hasher, presetSecret string, now time.Time) (secretOut string, created bool, err error) {
	if presetSecret != "" && len(presetSecret) < MinBootstrapSecretLength {
		return "", false, fmt.Errorf("bootstrap admin secret: must be at least %d characters", MinBootstrapSecretLength)
	}
	if _, err := store.GetMarker(ctx, storage.MarkerBootstrap); err == nil {
		return "", false, nil
	} else if !errors.Is(err, storage.ErrNotFound) {
		return "", false, fmt.Errorf("bootstrap: read the store's bootstrap marker: %w", err)
	}
	now = now.UTC().Truncate(time.Microsecond)
	plain, hash := presetSecret, []byte(nil)
	if plain == "" {
		plain, hash = h.Generate()
	} else {
		hash = h.Hash(plain)
	}
	c := &storage.Client{
		ID:                      AdminClientID,
		Name:                    "Mandate admin (bootstrap)",
		TokenEndpointAuthMethod: AuthSecretBasic,
		SecretHash:              hash,
		GrantTypes:              []string{GrantTypeClientCredentials},
		AllowedScopes:           []string{ScopeAdmin, ScopeAdminRead},
		CreatedAt:               now,
		UpdatedAt:               now,
	}
	detail, _ := json.Marshal(map[string]any{"client_id": AdminClientID, "preset_secret": presetSecret != ""})
	err = store.InTx(ctx, func(tx storage.Store) error {
		// First: of replicas starting together, the one whose marker commits creates the
		// client; the others conflict here.
		if err := tx.SetMarker(ctx, storage.MarkerBootstrap, now); err != nil {
			return err
		}
		if err := tx.CreateClient(ctx, c); err != nil {
			return err
		}
		return tx.AppendAudit(ctx, &storage.AuditRecord{
			ID:       storage.NewID("evt"),
			Time:     now,
			Event:    EventBootstrap,
			Outcome:  storage.OutcomeGranted,
			ClientID: AdminClientID,
			Detail:   detail,
		})
	})
	if errors.Is(err, storage.ErrConflict) { // another replica won the race (or mandate-admin exists)
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("bootstrap: create %s: %w", AdminClientID, err)
	}
	return plain, true, nil
}
