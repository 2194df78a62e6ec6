using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Diagnostics;
using Treaty.AspNetCore.InDoubt;
using Treaty.Core.Contracts;
using Treaty.Core.Diagnostics;

namespace Treaty.AspNetCore.Barrier;

/// <summary>Maps coordinator-facing branch endpoints behind the branch barrier.</summary>
public static class BarrierEndpointRouteBuilderExtensions
{
    /// <summary>
    /// Maps <c>POST <paramref name="pattern"/></c> as a branch endpoint. Each call: the envelope
    /// (<c>{gid, branch, op, payload}</c>, or the <c>Treaty-Gid</c>/<c>Treaty-Branch</c>/<c>Treaty-Op</c>
    /// headers) is read — malformed → 400 problem+json naming the fields —; a local transaction is
    /// opened on the registered <see cref="Data.ParticipantDatabase"/>; and then:
    /// <list type="bullet">
    /// <item>a duplicate (gid, branch, op) gets the first recorded answer, status and body, and
    /// <paramref name="handler"/> does not run;</item>
    /// <item>a compensation (compensate, cancel, rollback, abort) whose forward op never took effect
    /// here is recorded and answered 200 without running <paramref name="handler"/>
    /// ("null compensation");</item>
    /// <item>a forward op (action, try, prepare, canCommit, preCommit) arriving after its
    /// compensation is recorded and answered 409 <see cref="TreatyBarrier.AlreadyCompensatedType"/>
    /// without running <paramref name="handler"/> (no "hanging" reservation);</item>
    /// <item>otherwise <paramref name="handler"/> runs inside the transaction and its answer is
    /// recorded with its writes in one commit (a definitive failure rolls back the writes but keeps
    /// the answer); an exception rolls everything back and answers 500, so a retry runs again.</item>
    /// <item>an outcome op (confirm/cancel, commit/rollback, doCommit/abort) arriving after the
    /// opposite outcome took effect is answered 409 <see cref="TreatyBarrier.OutcomeConflictType"/>,
    /// neither applied nor recorded;</item>
    /// </list>
    /// Every protocol's operations go through it: saga action/compensate; tcc try/confirm/cancel;
    /// 2pc prepare/commit/rollback; 3pc canCommit/preCommit/doCommit/abort; msg action. A 2PC or
    /// 3PC vote that answered 2xx (prepare, canCommit, preCommit) is recorded in the prepared
    /// table with its stage, in the same commit, and the op that carries the outcome removes it:
    /// a participant that crashes after voting restarts still prepared, and the in-doubt resolver
    /// (<see cref="InDoubt.InDoubtServiceCollectionExtensions.AddTreatyInDoubtResolver"/>) can run
    /// the outcome with this <paramref name="handler"/> if the coordinator's call never comes — so
    /// map all the operations of a 2PC/3PC branch on one pattern (a route parameter such as
    /// <c>/payment/{op}</c> works) and switch on <see cref="BranchContext.Op"/>. The vote records
    /// the endpoint's <paramref name="name"/> (by default <paramref name="pattern"/>): keep it
    /// stable across deployments while votes may be in doubt, and unique in the application (two
    /// route groups that map the same relative pattern need names).
    /// The forward op and the compensation of one (gid, branch) never run concurrently. Requires
    /// <see cref="BarrierServiceCollectionExtensions.AddTreatyBarrier"/>.
    /// </summary>
    /// <param name="endpoints">The application or route group.</param>
    /// <param name="pattern">The route pattern.</param>
    /// <param name="handler">Runs each op the barrier lets through, inside the local transaction.</param>
    /// <param name="name">The endpoint's name in the prepared table; <paramref name="pattern"/> when null.</param>
    public static IEndpointConventionBuilder MapTreatyBranch(this IEndpointRouteBuilder endpoints, string pattern, BranchHandler handler, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentException.ThrowIfNullOrWhiteSpace(pattern);
        ArgumentNullException.ThrowIfNull(handler);
        name ??= pattern;
        var barrier = endpoints.ServiceProvider.GetService<BranchBarrier>()
            ?? throw new InvalidOperationException("MapTreatyBranch needs services.AddTreatyBarrier() and a registered ParticipantDatabase.");
        endpoints.ServiceProvider.GetRequiredService<BranchEndpointRegistry>().Register(new BranchEndpoint(name, pattern, handler, BranchEndpointKind.Barrier));
        var logger = endpoints.ServiceProvider.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(BranchBarrier));
        return endpoints.MapPost(pattern, http => HandleAsync(http, name, barrier, handler, logger));
    }

    private static async Task HandleAsync(HttpContext http, string name, BranchBarrier barrier, BranchHandler handler, ILogger logger)
    {
        var cancellationToken = http.RequestAborted;
        var call = await ReadCallAsync(http, logger, cancellationToken);
        if (call is null)
        {
            return;
        }

        using var scope = logger.BeginGidScope(call.Gid);
        using var activity = TreatyParticipantTelemetry.StartBranch(http, call);

        BarrierAnswer answer;
        try
        {
            answer = await barrier.ExecuteAsync(
                call,
                name,
                (transaction, token) => handler(new BranchContext(call, transaction, http), token),
                cancellationToken);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            // The coordinator hung up; it will retry, and nothing was recorded.
            return;
        }
#pragma warning disable CA1031 // Any failure of the handler or the database is "unknown" to the coordinator: 500, retry.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            BarrierLog.HandlerFailed(logger, exception, call.Gid, call.Branch, call.Op);
            await WriteFailureAsync(http, call, cancellationToken);
            return;
        }

        await WriteAsync(http, answer.Result.StatusCode, answer.Result.ContentType, answer.Result.Body, TreatyBarrier.HeaderValue(answer.Decision), cancellationToken);
    }

    /// <summary>Reads the envelope; a malformed one is answered 400 here and null returned.</summary>
    internal static async Task<BranchCall?> ReadCallAsync(HttpContext http, ILogger logger, CancellationToken cancellationToken)
    {
        var (call, errors) = await BranchCallReader.ReadAsync(http.Request, cancellationToken);
        if (call is not null)
        {
            return call;
        }

        BarrierLog.Malformed(logger, http.Request.Path, string.Join(", ", errors!.Keys));
        await WriteAsync(http, 400, "application/problem+json", ProblemJson.Write(
            400,
            ProblemTypes.Validation,
            "Malformed branch call",
            "The branch call is invalid: " + string.Join(", ", errors.Keys) + ".",
            errors), outcome: null, cancellationToken);
        return null;
    }

    /// <summary>Answers a branch call that failed with an exception: 500, nothing recorded, retry.</summary>
    internal static Task WriteFailureAsync(HttpContext http, BranchCall call, CancellationToken cancellationToken) =>
        WriteAsync(http, 500, "application/problem+json", ProblemJson.Write(
            500,
            ProblemTypes.Internal,
            "Branch failed",
            "The branch failed and nothing was recorded; retry the same call.",
            extensions: [new("gid", call.Gid), new("branch", call.Branch), new("op", call.Op)]), outcome: null, cancellationToken);

    internal static async Task WriteAsync(HttpContext http, int status, string contentType, string body, string? outcome, CancellationToken cancellationToken)
    {
        http.Response.StatusCode = status;
        http.Response.ContentType = contentType;
        if (outcome is not null)
        {
            http.Response.Headers[TreatyBarrier.OutcomeHeader] = outcome;
        }

        await http.Response.WriteAsync(body, cancellationToken);
    }
}
