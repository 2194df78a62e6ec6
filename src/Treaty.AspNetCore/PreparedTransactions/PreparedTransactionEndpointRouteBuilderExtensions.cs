using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.Diagnostics;
using Treaty.AspNetCore.InDoubt;
using Treaty.Core.Contracts;
using Treaty.Core.Diagnostics;

namespace Treaty.AspNetCore.PreparedTransactions;

/// <summary>Maps 2PC branch endpoints implemented with PostgreSQL's native prepared transactions.</summary>
public static class PreparedTransactionEndpointRouteBuilderExtensions
{
    /// <summary>
    /// Maps <c>POST <paramref name="pattern"/></c> as a 2PC branch whose vote is a PostgreSQL
    /// prepared transaction:
    /// <list type="bullet">
    /// <item><c>prepare</c> runs <paramref name="prepare"/> in a local transaction (write through
    /// <see cref="BranchContext.Transaction"/>; do not commit) and, when it answers 2xx, ends that
    /// transaction with <c>PREPARE TRANSACTION</c>: its writes and row locks are held by the
    /// database itself, across a crash of this process, invisible to others, until the outcome;
    /// a definitive failure (<see cref="BranchContext.Fail"/>) is a NO vote and prepares
    /// nothing;</item>
    /// <item><c>commit</c> is <c>COMMIT PREPARED</c> and <c>rollback</c> is <c>ROLLBACK PREPARED</c>;
    /// <paramref name="prepare"/> does not run for them, and there is no compensation to write;</item>
    /// <item>the barrier's guarantees hold: a duplicate gets the first answer (a duplicate prepare
    /// while prepared too), a rollback with nothing prepared is a recorded null rollback, a prepare
    /// after its rollback is refused 409 and prepares nothing, concurrent calls of one (gid, branch)
    /// are serialized, and an outcome after the opposite one is a 409 conflict.</item>
    /// </list>
    /// The prepared transaction is registered in the prepared table, so the in-doubt resolver
    /// (<see cref="InDoubtServiceCollectionExtensions.AddTreatyInDoubtResolver"/>) commits or
    /// rolls it back when the coordinator's call never comes. Other operations are answered 400.
    /// Requires <see cref="BarrierServiceCollectionExtensions.AddTreatyBarrier"/>, a
    /// <see cref="PostgreSqlParticipantDatabase"/>, and a server with <c>max_prepared_transactions</c>
    /// above 0 (checked at start). <paramref name="prepare"/> must not use temporary tables,
    /// <c>LISTEN</c>/<c>NOTIFY</c> or cursors <c>WITH HOLD</c>, which PostgreSQL cannot prepare.
    /// </summary>
    /// <param name="endpoints">The application or route group.</param>
    /// <param name="pattern">The route pattern.</param>
    /// <param name="prepare">The prepare's writes, in the transaction that will be prepared.</param>
    /// <param name="name">The endpoint's name in the prepared table (stable, unique in the application); <paramref name="pattern"/> when null.</param>
    public static IEndpointConventionBuilder MapTreatyPreparedTransactionBranch(this IEndpointRouteBuilder endpoints, string pattern, BranchHandler prepare, string? name = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentException.ThrowIfNullOrWhiteSpace(pattern);
        ArgumentNullException.ThrowIfNull(prepare);
        name ??= pattern;
        var services = endpoints.ServiceProvider;
        if (services.GetService<BranchBarrier>() is null)
        {
            throw new InvalidOperationException("MapTreatyPreparedTransactionBranch needs services.AddTreatyBarrier() and a registered ParticipantDatabase.");
        }

        if (services.GetRequiredService<ParticipantDatabase>() is not PostgreSqlParticipantDatabase)
        {
            throw new InvalidOperationException("MapTreatyPreparedTransactionBranch needs a PostgreSqlParticipantDatabase: prepared transactions are PostgreSQL's.");
        }

        var executor = services.GetRequiredService<PreparedTransactionExecutor>();
        services.GetRequiredService<BranchEndpointRegistry>().Register(new BranchEndpoint(name, pattern, prepare, BranchEndpointKind.PreparedTransaction));
        var logger = services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(PreparedTransactionExecutor));
        return endpoints.MapPost(pattern, http => HandleAsync(http, name, executor, prepare, logger));
    }

    private static async Task HandleAsync(HttpContext http, string name, PreparedTransactionExecutor executor, BranchHandler prepare, ILogger logger)
    {
        var cancellationToken = http.RequestAborted;
        var call = await BarrierEndpointRouteBuilderExtensions.ReadCallAsync(http, logger, cancellationToken);
        if (call is null)
        {
            return;
        }

        using var scope = logger.BeginGidScope(call.Gid);
        using var activity = TreatyParticipantTelemetry.StartBranch(http, call);

        if (!PreparedTransactionRules.Serves(call.Op))
        {
            var errors = new Dictionary<string, string[]>(StringComparer.Ordinal)
            {
                ["op"] = [$"'{call.Op}' is not served here: a prepared-transaction branch takes 2PC's prepare, commit and rollback."],
            };
            await BarrierEndpointRouteBuilderExtensions.WriteAsync(http, 400, "application/problem+json", ProblemJson.Write(
                400, ProblemTypes.Validation, "Operation not served", errors["op"][0], errors), outcome: null, cancellationToken);
            return;
        }

        BarrierAnswer answer;
        try
        {
            answer = (await executor.ExecuteAsync(
                call,
                name,
                (transaction, token) => prepare(new BranchContext(call, transaction, http), token),
                resolving: false,
                cancellationToken))!;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            return; // the coordinator hung up; it will retry, and the next call sees what was done
        }
#pragma warning disable CA1031 // Any failure of the handler or the database is "unknown" to the coordinator: 500, retry.
        catch (Exception exception)
#pragma warning restore CA1031
        {
            BarrierLog.HandlerFailed(logger, exception, call.Gid, call.Branch, call.Op);
            await BarrierEndpointRouteBuilderExtensions.WriteFailureAsync(http, call, cancellationToken);
            return;
        }

        await BarrierEndpointRouteBuilderExtensions.WriteAsync(http, answer.Result.StatusCode, answer.Result.ContentType, answer.Result.Body, TreatyBarrier.HeaderValue(answer.Decision), cancellationToken);
    }
}
