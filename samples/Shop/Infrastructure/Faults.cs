using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Treaty.AspNetCore.Barrier;

namespace Shop.Infrastructure;

/// <summary>
/// Fault rules and call counters for tests and the demo. A rule fails the next N calls of a path
/// with a status before the handler runs (so nothing is applied), and/or delays the handler; on
/// <c>/checkout</c> the delay holds the answer after the kit's commit instead, and
/// <c>killAfterCommit</c> kills the process (Environment.FailFast) between the commit and the answer.
/// Counters say how often a path was called and how often a call changed data.
/// Message holds (<see cref="MessageFaults"/>) stop the choreography's messaging at a crash point
/// (after the inbox commit, before the ack; after the send, before the outbox row is marked sent)
/// until the process is killed or the rules are cleared.
/// </summary>
internal sealed class FaultRegistry
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, FaultRuleView> _rules = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, (long Calls, long Applied)> _counts = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<(MessageHoldPoint At, string Type), MessageHoldView> _holds = [];
    private TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Set(FaultRuleView rule)
    {
        lock (_lock)
        {
            _rules[rule.Path] = rule;
        }
    }

    /// <summary>Clears the rules and the message holds, and lets every held delivery or send go on.</summary>
    public void ClearRules()
    {
        lock (_lock)
        {
            _rules.Clear();
            _holds.Clear();
            _release.TrySetResult();
            _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
    }

    /// <summary>Arms a one-shot hold of the next message of <paramref name="type"/> at <paramref name="at"/>.</summary>
    public void ArmHold(string type, MessageHoldPoint at)
    {
        lock (_lock)
        {
            _holds[(at, type)] = new MessageHoldView(type, MessageHoldView.NameOf(at), Armed: true, HeldMessageId: null);
        }
    }

    public IReadOnlyList<MessageHoldView> Holds()
    {
        lock (_lock)
        {
            return [.. _holds.Values.OrderBy(h => h.At, StringComparer.Ordinal).ThenBy(h => h.MessageType, StringComparer.Ordinal)];
        }
    }

    /// <summary>
    /// When a hold is armed at <paramref name="at"/> for <paramref name="type"/>, disarms it, records
    /// <paramref name="messageId"/> as held and returns the task that completes when the rules are
    /// cleared (never, if the process is killed first); otherwise null.
    /// </summary>
    public Task? TryHold(MessageHoldPoint at, string type, string messageId)
    {
        lock (_lock)
        {
            if (!_holds.TryGetValue((at, type), out var hold) || !hold.Armed)
            {
                return null;
            }

            _holds[(at, type)] = hold with { Armed = false, HeldMessageId = messageId };
            return _release.Task;
        }
    }

    /// <summary>Counts a delivery of a message of <paramref name="type"/> to this service, under <see cref="MessageFaults.CounterOf"/>.</summary>
    public void CountDelivery(string type, bool applied)
    {
        lock (_lock)
        {
            var path = MessageFaults.CounterOf(type);
            var (calls, count) = _counts.GetValueOrDefault(path);
            _counts[path] = (calls + 1, applied ? count + 1 : count);
        }
    }

    public void ClearCounts()
    {
        lock (_lock)
        {
            _counts.Clear();
        }
    }

    public IReadOnlyList<FaultRuleView> Rules()
    {
        lock (_lock)
        {
            return [.. _rules.Values.OrderBy(r => r.Path, StringComparer.Ordinal)];
        }
    }

    /// <summary>
    /// Counts a call and decides its fate: how long to delay it, whether to fail it (with which
    /// status), and whether a kill-after-commit rule is armed for it.
    /// </summary>
    public (TimeSpan Delay, int? FailWith, bool KillAfterCommit) OnCall(string path)
    {
        lock (_lock)
        {
            var (calls, applied) = _counts.GetValueOrDefault(path);
            _counts[path] = (calls + 1, applied);
            if (!_rules.TryGetValue(path, out var rule))
            {
                return (TimeSpan.Zero, null, false);
            }

            if (rule.KillAfterCommit)
            {
                // Disarmed by TryKill when it fires; a call that commits nothing leaves it armed.
                return (TimeSpan.FromMilliseconds(rule.DelayMs), null, true);
            }

            int? failWith = null;
            if (rule.FailTimes != 0)
            {
                failWith = rule.Status;
                if (rule.FailTimes > 0)
                {
                    rule = rule with { FailTimes = rule.FailTimes - 1 };
                }
            }

            if (rule.FailTimes == 0 && rule.DelayMs == 0)
            {
                _rules.Remove(path);
            }
            else
            {
                _rules[path] = rule;
            }

            return (TimeSpan.FromMilliseconds(rule.DelayMs), failWith, false);
        }
    }

    /// <summary>Disarms the kill-after-commit rule of <paramref name="path"/>; true when it was armed (then the caller dies).</summary>
    public bool TryKill(string path)
    {
        lock (_lock)
        {
            return _rules.TryGetValue(path, out var rule) && rule.KillAfterCommit && _rules.Remove(path);
        }
    }

    public void MarkApplied(string path)
    {
        lock (_lock)
        {
            var (calls, applied) = _counts.GetValueOrDefault(path);
            _counts[path] = (calls, applied + 1);
        }
    }

    public CallCountView Count(string path)
    {
        lock (_lock)
        {
            var (calls, applied) = _counts.GetValueOrDefault(path);
            return new CallCountView(path, calls, applied);
        }
    }

    public IReadOnlyList<CallCountView> Counts()
    {
        lock (_lock)
        {
            return [.. _counts.OrderBy(c => c.Key, StringComparer.Ordinal).Select(c => new CallCountView(c.Key, c.Value.Calls, c.Value.Applied))];
        }
    }
}

/// <summary>The <c>/_faults</c> endpoints and the middleware that applies the rules (only with <c>--faults</c>).</summary>
internal static class FaultEndpoints
{
    public const string Prefix = "/_faults";

    /// <summary>The checkout path, whose rules act after the kit's commit.</summary>
    public const string CheckoutPath = "/checkout";

    /// <summary>Set by the checkout handler when it stored a new order (in the kit's transaction).</summary>
    public const string CheckoutCommittedItem = "shop.checkout.created";

    public static void UseFaults(this WebApplication app)
    {
        var registry = app.Services.GetRequiredService<FaultRegistry>();
        var timeProvider = app.Services.GetRequiredService<TimeProvider>();
        app.Use(async (context, next) =>
        {
            var path = context.Request.Path.Value ?? "/";
            if (path.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase))
            {
                await next(context);
                return;
            }

            var (delay, failWith, killAfterCommit) = registry.OnCall(path);
            var afterCommit = path.Equals(CheckoutPath, StringComparison.OrdinalIgnoreCase);
            if (killAfterCommit || (afterCommit && delay > TimeSpan.Zero))
            {
                // POST /checkout runs behind the kit's Idempotency-Key middleware, which buffers
                // the handler's answer, commits it with the handler's writes, and only then writes
                // it to the client: the response starts after the commit. So a rule on /checkout
                // acts there, after the commit, and only when this request's handler really stored
                // an order (not on a replay, a 409 or a 400): the work is done, the answer is late
                // (delayMs) or never arrives (killAfterCommit).
                var pause = delay;
                context.Response.OnStarting(async () =>
                {
                    if (!context.Items.ContainsKey(CheckoutCommittedItem) || context.Response.StatusCode != StatusCodes.Status202Accepted)
                    {
                        return;
                    }

                    if (killAfterCommit && registry.TryKill(path))
                    {
                        Environment.FailFast($"Injected fault: killed after the commit of {path}, before the response.");
                    }

                    if (pause > TimeSpan.Zero)
                    {
                        await Task.Delay(pause, timeProvider, CancellationToken.None);
                    }
                });
                delay = TimeSpan.Zero;
            }

            if (delay > TimeSpan.Zero)
            {
                // Not cancelled when the caller goes away: like a real slow service, the call still
                // completes and applies its effect (the demo kills the coordinator meanwhile).
                await Task.Delay(delay, timeProvider, CancellationToken.None);
            }

            if (failWith is { } status)
            {
                context.Response.StatusCode = status;
                var problems = context.RequestServices.GetRequiredService<IProblemDetailsService>();
                await problems.WriteAsync(new ProblemDetailsContext
                {
                    HttpContext = context,
                    ProblemDetails = new ProblemDetails
                    {
                        Status = status,
                        Type = Problems.InjectedFault,
                        Title = "Injected fault",
                        Detail = $"A fault rule failed this call of {path} before it did anything.",
                    },
                });
                return;
            }

            try
            {
                await next(context);
            }
            finally
            {
                // "Applied" means a branch handler changed data AND the barrier committed it: the
                // kit sets its outcome header only after the commit, and the handler marks the
                // request only when it wrote an effect.
                if (context.Items.ContainsKey(Branches.AppliedItem)
                    && string.Equals(context.Response.Headers[TreatyBarrier.OutcomeHeader].ToString(), "executed", StringComparison.Ordinal))
                {
                    registry.MarkApplied(path);
                }
            }
        });

        app.MapPost(Prefix, async (HttpContext context) =>
        {
            var (request, error) = await JsonBody.ReadAsync(context.Request, ShopJsonContext.Web.FaultRuleRequest, context.RequestAborted);
            if (request is null)
            {
                return error!;
            }

            if (request.MessageType is not null)
            {
                return ArmHold(registry, request);
            }

            var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
            if (request.HoldAfterCommit == true || request.HoldAfterSend == true)
            {
                errors["messageType"] = ["holdAfterCommit and holdAfterSend need the messageType to hold, e.g. order.created."];
            }

            if (string.IsNullOrEmpty(request.Path) || !request.Path.StartsWith('/'))
            {
                errors["path"] = ["A path starting with '/' is required, e.g. /saga/payment/refund."];
            }

            if (request.FailTimes is < -1)
            {
                errors["failTimes"] = ["failTimes is a count, or -1 for 'until cleared'."];
            }

            if (request.Status is { } s && s is < 400 or > 599)
            {
                errors["status"] = ["status must be an error status (400-599)."];
            }

            if (request.DelayMs is < 0 or > 600_000)
            {
                errors["delayMs"] = ["delayMs must be between 0 and 600000."];
            }

            if (request.KillAfterCommit == true && !string.Equals(request.Path, CheckoutPath, StringComparison.OrdinalIgnoreCase))
            {
                errors["killAfterCommit"] = [$"killAfterCommit applies to {CheckoutPath} only."];
            }

            if (errors.Count > 0)
            {
                return Problems.Validation(errors);
            }

            var rule = new FaultRuleView(request.Path!, request.FailTimes ?? 0, request.Status ?? StatusCodes.Status503ServiceUnavailable, request.DelayMs ?? 0,
                request.KillAfterCommit ?? false);
            registry.Set(rule);
            return View(registry);
        });

        app.MapGet(Prefix, () => View(registry));

        // Clears the rules, not the counters: a test may lift a fault and then check how often the
        // path was called in all. Held messages go on.
        app.MapDelete(Prefix, () =>
        {
            registry.ClearRules();
            return Results.NoContent();
        });

        app.MapGet(Prefix + "/calls", (string? path) => path is null
            ? Results.Json(new CallCountsView(registry.Counts()), ShopJsonContext.Web.CallCountsView)
            : Results.Json(registry.Count(path), ShopJsonContext.Web.CallCountView));

        app.MapDelete(Prefix + "/calls", () =>
        {
            registry.ClearCounts();
            return Results.NoContent();
        });
    }

    private static IResult View(FaultRegistry registry) =>
        Results.Json(new FaultRulesView(registry.Rules(), registry.Holds()), ShopJsonContext.Web.FaultRulesView);

    // { "messageType": "order.created", "holdAfterCommit": true } or { ..., "holdAfterSend": true }.
    private static IResult ArmHold(FaultRegistry registry, FaultRuleRequest request)
    {
        var errors = new Dictionary<string, string[]>(StringComparer.Ordinal);
        if (string.IsNullOrWhiteSpace(request.MessageType))
        {
            errors["messageType"] = ["messageType must name an event type, e.g. order.created."];
        }

        if (request.Path is not null || request.FailTimes is not null || request.Status is not null || request.DelayMs is not null || request.KillAfterCommit is not null)
        {
            errors["path"] = ["A message hold takes messageType and one of holdAfterCommit or holdAfterSend, nothing else."];
        }

        if ((request.HoldAfterCommit == true) == (request.HoldAfterSend == true))
        {
            errors["holdAfterCommit"] = ["Exactly one of holdAfterCommit or holdAfterSend must be true."];
        }

        if (errors.Count > 0)
        {
            return Problems.Validation(errors);
        }

        registry.ArmHold(request.MessageType!, request.HoldAfterCommit == true ? MessageHoldPoint.AfterCommit : MessageHoldPoint.AfterSend);
        return View(registry);
    }
}
