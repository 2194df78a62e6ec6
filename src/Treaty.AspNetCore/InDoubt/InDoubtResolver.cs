using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Treaty.AspNetCore.Barrier;
using Treaty.AspNetCore.Data;
using Treaty.AspNetCore.PreparedTransactions;
using Treaty.Core.Diagnostics;

namespace Treaty.AspNetCore.InDoubt;

/// <summary>A branch in doubt, as the prepared table holds it.</summary>
internal sealed record PreparedBranch(string Gid, string Branch, PreparedStage Stage, string Endpoint, string Payload, long Since, int Checks, string? Transaction);

/// <summary>What the resolver did about one branch in one pass.</summary>
internal enum InDoubtResult
{
    /// <summary>Still in doubt: asked again later.</summary>
    Waiting,

    /// <summary>The outcome ran here, or had already run (a duplicate of the coordinator's call).</summary>
    Resolved,

    /// <summary>The branch left its stage while the coordinator was asked: nothing to do.</summary>
    Superseded,

    /// <summary>The outcome could not run (refused, failed, no endpoint): tried again later.</summary>
    Failed,
}

/// <summary>One branch looked at in a pass: what the coordinator said, what was decided, what happened.</summary>
internal sealed record InDoubtResolution(string Gid, string Branch, PreparedStage Stage, CoordinatorAnswer Answer, InDoubtAction Action, InDoubtResult Result, BarrierDecision? Barrier = null);

/// <summary>
/// The participant's side of a commit protocol that leaves it in doubt. Every
/// <see cref="InDoubtResolverOptions.PollInterval"/> it reads the prepared table for branches
/// that have been in doubt longer than <see cref="InDoubtResolverOptions.After"/> and whose next
/// check is due, asks the coordinator about each, lets <see cref="InDoubtRules.Decide"/> choose,
/// and then either reschedules the check with backoff (wait) or runs the outcome operation here,
/// through the barrier, with the handler of the endpoint that took the vote — so a coordinator's
/// call that arrives later, or at the same moment, is a deduplicated replay, and the handler runs
/// once. Passes never overlap.
/// </summary>
internal sealed class InDoubtResolver(
    ParticipantDatabase database,
    BranchBarrier barrier,
    BranchEndpointRegistry endpoints,
    IHttpClientFactory httpClients,
    IServiceProvider services,
    IOptions<InDoubtResolverOptions> options,
    TimeProvider timeProvider,
    ILogger<InDoubtResolver> logger) : BackgroundService
{
    private readonly SemaphoreSlim _pass = new(1, 1);
    private readonly TaskCompletionSource _firstPass = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly InDoubtResolverOptions _options = options.Value;
    private CoordinatorClient? _coordinator;
    private PeriodicTimer? _timer;

    private CoordinatorClient Coordinator =>
        _coordinator ??= new CoordinatorClient(_options.Coordinator!, _options.RequestTimeout, timeProvider, logger);

    /// <summary>Completes when the pass run at start has ended (whatever its result), or the resolver stopped before it.</summary>
    internal Task FirstPass => _firstPass.Task;

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        // created here, not in ExecuteAsync (a background thread), so no tick of a clock that moves
        // right after start is missed
        _timer = new PeriodicTimer(_options.PollInterval, timeProvider);
        InDoubtLog.Started(logger, _options.Coordinator!, _options.After, _options.PollInterval);
        await base.StartAsync(cancellationToken);
    }

    public override void Dispose()
    {
        _timer?.Dispose();
        _pass.Dispose();
        base.Dispose();
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var timer = _timer ?? throw new InvalidOperationException("The in-doubt resolver was not started.");
        try
        {
            // One pass at once: a participant restarting after a long outage may hold branches that
            // are long overdue.
            do
            {
                try
                {
                    await ResolveDueAsync(stoppingToken);
                }
                catch (Exception exception) when (exception is not OperationCanceledException || !stoppingToken.IsCancellationRequested)
                {
                    // never let a failure stop the host: the next pass tries again
                    InDoubtLog.PassFailed(logger, exception, _options.PollInterval);
                }

                _firstPass.TrySetResult();
            }
            while (await timer.WaitForNextTickAsync(stoppingToken));
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // stopping
        }
        finally
        {
            _firstPass.TrySetResult();
        }
    }

    /// <summary>One pass: every branch whose check is due, in order of due time.</summary>
    public async Task<IReadOnlyList<InDoubtResolution>> ResolveDueAsync(CancellationToken cancellationToken)
    {
        await _pass.WaitAsync(cancellationToken);
        try
        {
            var due = await ReadDueAsync(cancellationToken);
            if (due.Count == 0)
            {
                return [];
            }

            var http = httpClients.CreateClient(InDoubtResolverDefaults.HttpClientName);
            var resolutions = new List<InDoubtResolution>(due.Count);
            foreach (var branch in due)
            {
                resolutions.Add(await ResolveAsync(http, branch, cancellationToken));
            }

            return resolutions;
        }
        finally
        {
            _pass.Release();
        }
    }

    private async Task<InDoubtResolution> ResolveAsync(HttpClient http, PreparedBranch branch, CancellationToken cancellationToken)
    {
        // One branch at a time, each in its gid's scope: the question to the coordinator, the
        // decision and the outcome run here (barrier, prepared transaction, handler) all carry it.
        using var scope = logger.BeginGidScope(branch.Gid);
        var answer = await Coordinator.AskAsync(http, branch.Gid, cancellationToken);
        var action = InDoubtRules.Decide(branch.Stage, answer);
        if (action == InDoubtAction.Wait)
        {
            var delay = await RescheduleAsync(branch, cancellationToken);
            InDoubtLog.StillInDoubt(logger, branch.Gid, branch.Branch, branch.Stage, answer, branch.Checks + 1, delay);
            return new InDoubtResolution(branch.Gid, branch.Branch, branch.Stage, answer, action, InDoubtResult.Waiting);
        }

        var op = InDoubtRules.OperationFor(branch.Stage, action);
        if (branch.Stage != PreparedStage.Prepared && answer is CoordinatorAnswer.Unreachable or CoordinatorAnswer.UnknownTransaction)
        {
            InDoubtLog.TerminationRule(logger, branch.Gid, branch.Branch, branch.Stage, answer, op);
        }

        var endpoint = endpoints.Find(branch.Endpoint);
        var kind = branch.Transaction is null ? BranchEndpointKind.Barrier : BranchEndpointKind.PreparedTransaction;
        if (endpoint is null || endpoint.Kind != kind)
        {
            InDoubtLog.UnknownEndpoint(logger, branch.Gid, branch.Branch, branch.Endpoint, kind.ToString());
            await RescheduleAsync(branch, cancellationToken);
            return new InDoubtResolution(branch.Gid, branch.Branch, branch.Stage, answer, action, InDoubtResult.Failed);
        }

        BarrierAnswer? outcome;
        try
        {
            outcome = await RunLocallyAsync(endpoint, branch, op, cancellationToken);
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            var delay = await RescheduleAsync(branch, cancellationToken);
            InDoubtLog.OutcomeFailed(logger, exception, branch.Gid, branch.Branch, op, delay);
            return new InDoubtResolution(branch.Gid, branch.Branch, branch.Stage, answer, action, InDoubtResult.Failed);
        }

        if (outcome is null)
        {
            InDoubtLog.Superseded(logger, branch.Gid, branch.Branch, branch.Stage);
            return new InDoubtResolution(branch.Gid, branch.Branch, branch.Stage, answer, action, InDoubtResult.Superseded);
        }

        if (!outcome.Result.IsSuccess)
        {
            // The handler refused its outcome (a compensation or final op cannot fail for good), or
            // the opposite outcome already took effect: nothing recorded, ask again later.
            var delay = await RescheduleAsync(branch, cancellationToken);
            InDoubtLog.OutcomeRefused(logger, branch.Gid, branch.Branch, op, outcome.Result.StatusCode, delay);
            return new InDoubtResolution(branch.Gid, branch.Branch, branch.Stage, answer, action, InDoubtResult.Failed, outcome.Decision);
        }

        InDoubtLog.Resolved(logger, branch.Gid, branch.Branch, branch.Stage, answer, op, outcome.Result.StatusCode, TreatyBarrier.HeaderValue(outcome.Decision));
        return new InDoubtResolution(branch.Gid, branch.Branch, branch.Stage, answer, action, InDoubtResult.Resolved, outcome.Decision);
    }

    private async Task<BarrierAnswer?> RunLocallyAsync(BranchEndpoint endpoint, PreparedBranch branch, string op, CancellationToken cancellationToken)
    {
        JsonElement payload;
        using (var document = JsonDocument.Parse(branch.Payload))
        {
            payload = document.RootElement.Clone();
        }

        var call = new BranchCall(branch.Gid, branch.Branch, op, payload);

        // No request: the handler gets the application's services in a scope of their own.
        await using var scope = services.CreateAsyncScope();
        var http = new DefaultHttpContext { RequestServices = scope.ServiceProvider, RequestAborted = cancellationToken };
        Task<BranchResult> Handler(ParticipantTransaction transaction, CancellationToken token) =>
            endpoint.Handler(new BranchContext(call, transaction, http, isInDoubtResolution: true), token);

        return endpoint.Kind == BranchEndpointKind.PreparedTransaction
            ? await services.GetRequiredService<PreparedTransactionExecutor>().ExecuteAsync(call, branch.Endpoint, Handler, resolving: true, cancellationToken)
            : await barrier.ResolveAsync(call, branch.Endpoint, branch.Stage, Handler, cancellationToken);
    }

    private async Task<IReadOnlyList<PreparedBranch>> ReadDueAsync(CancellationToken cancellationToken)
    {
        var now = timeProvider.GetUtcNow();
        var due = new List<PreparedBranch>();
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using (var select = transaction.CreateCommand(
            PreparedSql.SelectDue,
            ("cutoff", (now - _options.After).ToUnixTimeMilliseconds()),
            ("now", now.ToUnixTimeMilliseconds()),
            ("limit", _options.BatchSize)))
        await using (var reader = await select.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                due.Add(new PreparedBranch(
                    reader.GetString(0),
                    reader.GetString(1),
                    InDoubtRules.StageFromColumn(reader.GetString(2)),
                    reader.GetString(3),
                    reader.GetString(4),
                    reader.GetInt64(5),
                    reader.GetInt32(6),
                    reader.IsDBNull(7) ? null : reader.GetString(7)));
            }
        }

        await transaction.CommitAsync(cancellationToken);
        return due;
    }

    private async Task<TimeSpan> RescheduleAsync(PreparedBranch branch, CancellationToken cancellationToken)
    {
        var delay = InDoubtRules.NextCheckDelay(branch.Checks, _options.FirstRecheckDelay, _options.MaxRecheckDelay);
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using (var update = transaction.CreateCommand(
            PreparedSql.Reschedule,
            ("next_check_at", (timeProvider.GetUtcNow() + delay).ToUnixTimeMilliseconds()),
            ("gid", branch.Gid),
            ("branch", branch.Branch),
            ("stage", InDoubtRules.ToColumn(branch.Stage)),
            ("since", branch.Since)))
        {
            await update.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
        return delay;
    }
}
