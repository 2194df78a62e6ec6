using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Microsoft.AspNetCore.Http;
using Treaty.AspNetCore.Data;

namespace Treaty.AspNetCore.Barrier;

/// <summary>
/// What a branch handler gets: the call (gid, branch, op, payload) and the participant's open local
/// transaction, in which the barrier has recorded (or is about to record) this call. Write the
/// branch's effect through <see cref="Transaction"/> and answer with <see cref="Ok()"/> or
/// <see cref="Fail"/>; do not commit or roll back the transaction yourself: the barrier does, so
/// the effect and its barrier row are committed together or not at all.
/// </summary>
public sealed class BranchContext
{
    internal BranchContext(BranchCall call, ParticipantTransaction transaction, HttpContext httpContext, bool isInDoubtResolution = false)
    {
        IsInDoubtResolution = isInDoubtResolution;
        Gid = call.Gid;
        Branch = call.Branch;
        Op = call.Op;
        Payload = call.Payload;
        Transaction = transaction;
        HttpContext = httpContext;
    }

    /// <summary>The global transaction id.</summary>
    public string Gid { get; }

    /// <summary>The branch name within the transaction.</summary>
    public string Branch { get; }

    /// <summary>The operation (action, compensate, try, confirm, cancel, prepare, commit, rollback, canCommit, preCommit, doCommit, abort).</summary>
    public string Op { get; }

    /// <summary>The transaction's payload for this branch (JSON <c>null</c> when the call carried none).</summary>
    public JsonElement Payload { get; }

    /// <summary>The participant's local transaction; the handler's writes belong in it.</summary>
    public ParticipantTransaction Transaction { get; }

    /// <summary>
    /// The HTTP request, for its services and headers. When <see cref="IsInDoubtResolution"/> is
    /// true there is no request: a context whose <c>RequestServices</c> is a fresh scope of the
    /// application's services and whose request is empty.
    /// </summary>
    public HttpContext HttpContext { get; }

    /// <summary>
    /// True when the kit's in-doubt resolver runs this outcome (commit, rollback, doCommit, abort)
    /// in-process because the coordinator's call did not arrive in time; false for a coordinator's
    /// call. The barrier deduplicates both the same way.
    /// </summary>
    public bool IsInDoubtResolution { get; }

    /// <summary>A 200 with an empty JSON object.</summary>
    public BranchResult Ok() => BranchResult.Ok();

    /// <summary>A 200 with <paramref name="value"/> as its JSON body.</summary>
    public BranchResult Ok<T>(T value, JsonTypeInfo<T> typeInfo) => BranchResult.Ok(value, typeInfo);

    /// <summary>A 200 with <paramref name="body"/> as its JSON body.</summary>
    public BranchResult Ok(JsonElement body) => BranchResult.Ok(body);

    /// <summary>A definitive business failure; see <see cref="BranchResult.Fail"/>.</summary>
    public BranchResult Fail(int statusCode, string type, string title, string? detail = null) =>
        BranchResult.Fail(statusCode, type, title, detail);
}

/// <summary>A branch operation's handler, run by the barrier inside the participant's local transaction.</summary>
/// <param name="context">The call and the open transaction.</param>
/// <param name="cancellationToken">Cancelled when the coordinator's request is aborted.</param>
public delegate Task<BranchResult> BranchHandler(BranchContext context, CancellationToken cancellationToken);
