using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Treaty.Core.Diagnostics;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Security;
using Treaty.Storage.PostgreSql;

namespace Treaty.Server.Alerts;

/// <summary>
/// The alert webhook (<c>--alert-webhook</c>): records an alert when a transaction becomes stuck and
/// when that stops, in <see cref="AlertOutbox"/>, and POSTs each to the webhook until it answers 2xx
/// (signed like branch calls when <c>--alert-secret</c> is set; at least once, deduplicated by id).
/// Watches durable writes through the engine's observer hooks (cheap: a lookup only for transactions
/// with an open stuck episode) and reconciles with the store at start and every
/// <see cref="TreatyServerOptions.AlertReconcileInterval"/>, so a crash between a write and its
/// alert loses nothing.
/// </summary>
internal sealed partial class AlertMonitor : BackgroundService, IEngineObserver
{
    private static readonly MediaTypeHeaderValue Json = new("application/json") { CharSet = "utf-8" };
    private readonly ITransactionStore _store;
    private readonly TreatyServerOptions _options;
    private readonly TimeProvider _time;
    private readonly IRandomSource _random;
    private readonly ILogger<AlertMonitor> _logger;
    private readonly Uri _webhook;
    private readonly byte[]? _secret;
    private readonly HttpClient _http;
    private readonly Channel<string> _checks = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
    // Transactions with a stuck episode whose resolution is not recorded yet; the hot path only
    // looks here when it is not empty.
    private readonly ConcurrentDictionary<string, byte> _open = new(StringComparer.Ordinal);
    private readonly RetryPolicy _retry;
    private IAlertOutbox? _outbox;
    private long _rounds;

    public AlertMonitor(ITransactionStore store, TreatyServerOptions options, TimeProvider time, IRandomSource random, ILogger<AlertMonitor> logger)
    {
        _store = store;
        _options = options;
        _time = time;
        _random = random;
        _logger = logger;
        _webhook = new Uri(options.AlertWebhook ?? throw new InvalidOperationException("AlertWebhook is not set."), UriKind.Absolute);
        _secret = options.AlertSecret is { } secret ? Encoding.UTF8.GetBytes(secret) : null;
        _retry = new RetryPolicy(int.MaxValue, (long)options.AlertRetryInitialDelay.TotalMilliseconds, (long)options.AlertRetryMaxDelay.TotalMilliseconds);
        _http = new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false, UseCookies = false, ConnectTimeout = TimeSpan.FromSeconds(5) })
        {
            Timeout = TimeSpan.FromSeconds(10),
        };
    }

    /// <summary>How many times the loop has looked for work (tests: it sleeps when there is none).</summary>
    internal long Rounds => Interlocked.Read(ref _rounds);

    /// <summary>Every alert recorded so far (tests and operators).</summary>
    internal Task<IReadOnlyList<AlertRow>> AlertsAsync(CancellationToken cancellationToken) =>
        _outbox is { } outbox ? outbox.AllAsync(cancellationToken) : Task.FromResult<IReadOnlyList<AlertRow>>([]);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        try
        {
            _outbox = await OpenOutboxAsync(stoppingToken);
            foreach (var gid in await _outbox.OpenEpisodesAsync(stoppingToken))
            {
                _open[gid] = 0;
            }

            LogStarted(_logger, _webhook.GetLeftPart(UriPartial.Path), _secret is not null);
            var nextReconcile = _time.GetUtcNow();
            while (!stoppingToken.IsCancellationRequested)
            {
                try
                {
                    Interlocked.Increment(ref _rounds);
                    if (_time.GetUtcNow() >= nextReconcile)
                    {
                        await ReconcileAsync(stoppingToken);
                        nextReconcile = _time.GetUtcNow() + _options.AlertReconcileInterval;
                    }

                    while (_checks.Reader.TryRead(out var gid))
                    {
                        await CheckAsync(gid, stoppingToken);
                    }

                    await DeliverDueAsync(stoppingToken);
                    await WaitAsync(nextReconcile, stoppingToken);
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    LogRoundFailed(_logger, ex);
                    await Task.Delay(TimeSpan.FromSeconds(1), _time, stoppingToken);
                }
            }
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            // shutting down
        }
        finally
        {
            if (_outbox is not null)
            {
                await _outbox.DisposeAsync();
            }
        }
    }

    /// <summary>
    /// On PostgreSQL the instances share one outbox in the database (so a transaction another
    /// instance takes over is not alerted twice); on SQLite it is <c>alerts.db</c> beside the store.
    /// </summary>
    private async Task<IAlertOutbox> OpenOutboxAsync(CancellationToken cancellationToken)
    {
        if (_store is PostgreSqlTransactionStore postgres)
        {
            await postgres.InitializeAsync(cancellationToken);
            return await PostgresAlertOutbox.OpenAsync(_options.ConnectionString!, postgres.Schema, cancellationToken);
        }

        return await AlertOutbox.OpenAsync(Path.Combine(_options.DataDir, "alerts.db"), cancellationToken);
    }

    /// <summary>Sleeps until a transaction needs a look, the next alert is due, or the next reconcile.</summary>
    private async Task WaitAsync(DateTimeOffset nextReconcile, CancellationToken stoppingToken)
    {
        var wakeAt = nextReconcile;
        if (await _outbox!.NextDueAsync(stoppingToken) is { } due && due < wakeAt)
        {
            wakeAt = due;
        }

        var wait = wakeAt - _time.GetUtcNow();
        if (wait <= TimeSpan.Zero)
        {
            return;
        }

        using var timeout = new CancellationTokenSource(wait, _time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, stoppingToken);
        try
        {
            await _checks.Reader.WaitToReadAsync(linked.Token);
        }
        catch (OperationCanceledException) when (!stoppingToken.IsCancellationRequested)
        {
            // time to look again
        }
    }

    /// <summary>Every stuck transaction in the store, and every open episode, get a look.</summary>
    private async Task ReconcileAsync(CancellationToken cancellationToken)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        string? cursor = null;
        do
        {
            var page = await _store.ListAsync(new TransactionQuery(Stuck: true, Limit: 500, Cursor: cursor), cancellationToken);
            foreach (var item in page.Items)
            {
                if (seen.Add(item.Gid))
                {
                    await CheckAsync(item.Gid, cancellationToken);
                }
            }

            cursor = page.NextCursor;
        }
        while (cursor is not null);

        foreach (var gid in _open.Keys)
        {
            if (seen.Add(gid))
            {
                await CheckAsync(gid, cancellationToken);
            }
        }
    }

    /// <summary>Records whatever alerts <paramref name="gid"/>'s durable state calls for.</summary>
    private async Task CheckAsync(string gid, CancellationToken cancellationToken)
    {
        using var scope = _logger.BeginGidScope(gid);
        var state = await _store.GetAsync(gid, cancellationToken);
        var ledger = await _outbox!.LedgerAsync(gid, cancellationToken);
        var episodes = 0;
        if (state is { Stuck: true })
        {
            episodes = (await _store.GetJournalAsync(gid, cancellationToken)).Count(r => r.Entry.Kind == JournalKinds.Stuck);
        }

        // Open: an episode is recorded and its end is not. Another instance may have recorded it
        // (a shared outbox), so this one watches the transaction too, and reports its end if it is
        // the one that sees it.
        var open = ledger.LastStuckEpisode > 0 && !ledger.LastResolved;
        foreach (var alert in AlertRules.Decide(state, episodes, ledger))
        {
            var now = _time.GetUtcNow();
            var message = Message(gid, alert, state, now);
            var body = JsonSerializer.Serialize(message, AlertJsonContext.Default.AlertMessage);
            if (await _outbox.AddAsync(message.Id, gid, alert.Kind, alert.Episode, body, now, cancellationToken))
            {
                LogRecorded(_logger, message.Id, message.Message);
            }

            open = alert.Kind == AlertRules.Stuck;
        }

        if (open)
        {
            _open[gid] = 0;
        }
        else
        {
            _open.TryRemove(gid, out _);
        }
    }

    private static AlertMessage Message(string gid, AlertToRecord alert, TransactionState? state, DateTimeOffset now)
    {
        var link = $"/api/v1/transactions/{Uri.EscapeDataString(gid)}";
        var status = state?.Status.ToWire();
        if (alert.Kind == AlertRules.Stuck)
        {
            var cause = state!.StuckOn!;
            return new AlertMessage(alert.Id(gid), alert.Kind, gid, alert.Episode, state.Spec.Protocol.ToWire(), status, now,
                $"Transaction {gid} is stuck: {cause}",
                new AlertStuckOn(cause.Branch, cause.Op, cause.Attempts, cause.LastStatusCode, cause.LastError), state.Reason, link);
        }

        var how = state is null ? "no longer exists" : state.IsTerminal ? $"finished {status}" : $"is moving again ({status})";
        return new AlertMessage(alert.Id(gid), alert.Kind, gid, alert.Episode, state?.Spec.Protocol.ToWire(), status, now,
            $"Transaction {gid} is no longer stuck: it {how}", null, state?.Reason, link);
    }

    private async Task DeliverDueAsync(CancellationToken cancellationToken)
    {
        var due = await _outbox!.ClaimDueAsync(_time.GetUtcNow(), PostgresAlertOutbox.ClaimBatch, cancellationToken);
        foreach (var row in due)
        {
            using var scope = _logger.BeginGidScope(row.Gid);
            var attempts = row.Attempts + 1;
            var error = await PostAsync(row, cancellationToken);
            if (error is null)
            {
                await _outbox.MarkDeliveredAsync(row.Seq, attempts, _time.GetUtcNow(), cancellationToken);
                LogDelivered(_logger, row.Id, attempts);
            }
            else
            {
                var delay = Backoff.Delay(attempts, _retry, _random.NextDouble());
                await _outbox.MarkFailedAsync(row.Seq, attempts, _time.GetUtcNow() + delay, error, cancellationToken);
                LogDeliveryFailed(_logger, row.Id, attempts, error, delay);
            }
        }
    }

    /// <summary>Null when the webhook took it (2xx); otherwise why not.</summary>
    private async Task<string?> PostAsync(AlertRow row, CancellationToken cancellationToken)
    {
        var body = Encoding.UTF8.GetBytes(row.Body);
        using var request = new HttpRequestMessage(HttpMethod.Post, _webhook)
        {
            Content = new ByteArrayContent(body) { Headers = { ContentType = Json } },
        };
        request.Headers.Add("Idempotency-Key", row.Id);
        request.Headers.Add("Treaty-Alert", row.Kind);
        if (_secret is not null)
        {
            request.Headers.TryAddWithoutValidation(CallbackSignature.HeaderName, CallbackSignature.Sign(_secret, body, _time.GetUtcNow()));
        }

        try
        {
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
            return response.IsSuccessStatusCode ? null : $"HTTP {(int)response.StatusCode}";
        }
        catch (HttpRequestException ex)
        {
            return ex.Message;
        }
        catch (TaskCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            return $"no answer within {_http.Timeout.TotalSeconds:0} s";
        }
    }

    private void Nudge(string gid) => _checks.Writer.TryWrite(gid);

    void IEngineObserver.Persisted(TransactionState state, bool forced)
    {
        // Durable now: a transaction that became stuck, or one with an open episode that moved.
        if (state.Stuck ? !_open.ContainsKey(state.Gid) : !_open.IsEmpty && _open.ContainsKey(state.Gid))
        {
            Nudge(state.Gid);
        }
    }

    void IEngineObserver.Finished(TransactionState state)
    {
        if (!_open.IsEmpty && _open.ContainsKey(state.Gid))
        {
            Nudge(state.Gid);
        }
    }

    void IEngineObserver.Alert(TransactionState state, Alert alert) => Nudge(state.Gid);

    void IEngineObserver.Submitted(TransactionState state)
    {
    }

    void IEngineObserver.BranchCalled(TransactionState state, BranchCall call, BranchOutcome outcome, TimeSpan duration)
    {
    }

    public override void Dispose()
    {
        _http.Dispose();
        base.Dispose();
    }

    [LoggerMessage(EventId = 3101, Level = LogLevel.Information, Message = "Alerts go to {Webhook} (signed: {Signed})")]
    private static partial void LogStarted(ILogger logger, string webhook, bool signed);

    [LoggerMessage(EventId = 3102, Level = LogLevel.Information, Message = "Alert {Id} recorded: {Message}")]
    private static partial void LogRecorded(ILogger logger, string id, string message);

    [LoggerMessage(EventId = 3103, Level = LogLevel.Information, Message = "Alert {Id} delivered (attempt {Attempt})")]
    private static partial void LogDelivered(ILogger logger, string id, int attempt);

    [LoggerMessage(EventId = 3104, Level = LogLevel.Warning, Message = "Alert {Id} not delivered (attempt {Attempt}): {Error}; next try in {Delay}")]
    private static partial void LogDeliveryFailed(ILogger logger, string id, int attempt, string error, TimeSpan delay);

    [LoggerMessage(EventId = 3105, Level = LogLevel.Warning, Message = "An alert round failed; the next one runs in a second")]
    private static partial void LogRoundFailed(ILogger logger, Exception exception);
}
