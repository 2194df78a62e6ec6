using Microsoft.AspNetCore.Http;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Idempotency;

/// <summary>Access to the participant transaction of an idempotent request.</summary>
public static class IdempotencyHttpContextExtensions
{
    /// <summary>
    /// The local transaction an idempotent request's handler runs in: write through it (its
    /// <see cref="ParticipantTransaction.CreateCommand"/>) and the writes commit together with the
    /// stored response, or roll back together when the handler fails (5xx or an exception). The
    /// middleware commits it: the handler must neither commit nor dispose it. Null when the
    /// endpoint is not idempotent or the request carries no key.
    /// </summary>
    /// <remarks>
    /// On SQLite this transaction holds the database's single write lock while the handler runs:
    /// write through it, not through a connection of your own, which would wait for the lock.
    /// </remarks>
    public static ParticipantTransaction? GetParticipantTransaction(this HttpContext context)
    {
        ArgumentNullException.ThrowIfNull(context);
        return context.Features.Get<ParticipantTransactionFeature>()?.Transaction;
    }
}
