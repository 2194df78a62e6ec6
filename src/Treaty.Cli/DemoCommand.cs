using System.CommandLine;
using Spectre.Console;
using Treaty.Cli.Experiments;

namespace Treaty.Cli;

/// <summary>
/// <c>treaty demo</c>: the Shop end to end. By default it runs the saga's failure scenarios, the
/// checkout cases under every protocol (one table), and every experiment; <c>--protocol</c> and
/// <c>--experiment</c> run one part; <c>--transport rabbitmq --rabbitmq URL</c> runs the choreographed
/// checkout's events over a RabbitMQ broker instead of HTTP between the services. It exits 0 only if
/// every check held, 2 on a usage error.
/// </summary>
internal static class DemoCommand
{
    public static Command Create()
    {
        var keep = new Option<bool>("--keep") { Description = "Leave the coordinator and the Shop running afterwards and print their URLs" };
        var dataDir = new Option<string?>("--data-dir") { Description = "Where the databases go (default: a new temp directory, deleted afterwards)" };
        var protocol = new Option<string?>("--protocol")
        {
            Description = "Run only the checkout cases under this protocol: " + string.Join(", ", ProtocolComparison.Protocols),
        };
        protocol.AcceptOnlyFromAmong(ProtocolComparison.Protocols);
        var experiment = new Option<string?>("--experiment")
        {
            Description = "Run only this experiment: " + string.Join(", ", ExperimentCatalogue.All.Select(e => e.Name)),
        };
        experiment.AcceptOnlyFromAmong([.. ExperimentCatalogue.All.Select(e => e.Name)]);
        var transport = new Option<string?>(DemoTransport.TransportOption)
        {
            Description = "How the choreographed checkout's events travel between the Shop's services: embedded (default, HTTP between them) or rabbitmq (needs --rabbitmq)",
        };
        var rabbitMq = new Option<string?>(DemoTransport.RabbitMqOption)
        {
            Description = "The RabbitMQ broker for --transport rabbitmq, e.g. amqp://guest:guest@127.0.0.1:5672/",
        };
        var command = new Command("demo", "Start the coordinator and the Shop (Order, Payment, Inventory), run the checkout scenarios under every protocol and the experiments")
        {
            keep, dataDir, protocol, experiment, transport, rabbitMq,
        };
        command.SetAction((parse, cancellationToken) =>
        {
            // Checked before anything starts: a wrong flag costs no process.
            var (chosen, error) = DemoTransport.Parse(parse.GetValue(transport), parse.GetValue(rabbitMq));
            if (chosen is null)
            {
                CliConsole.Error(parse).MarkupLineInterpolated($"[red]{error}[/]");
                return Task.FromResult(CliConsole.UsageError);
            }

            return RunAsync(
                new DemoPlan(parse.GetValue(protocol), parse.GetValue(experiment)), parse.GetValue(keep), parse.GetValue(dataDir) is { } dir ? UserPath.Resolve(dir) : null,
                CliConsole.Out(parse), cancellationToken, chosen);
        });
        return command;
    }

    /// <summary>What to run: everything, or only the named protocol and/or experiment.</summary>
    internal sealed record DemoPlan(string? Protocol, string? Experiment)
    {
        public bool Everything => Protocol is null && Experiment is null;

        public IEnumerable<string> Protocols => Everything ? ProtocolComparison.Protocols : Protocol is null ? [] : [Protocol];

        public IEnumerable<Experiment> Experiments => Everything
            ? ExperimentCatalogue.All
            : ExperimentCatalogue.All.Where(e => e.Name == Experiment);
    }

    public static async Task<int> RunAsync(DemoPlan plan, bool keep, string? dataDir, IAnsiConsole console, CancellationToken cancellationToken, DemoTransport? transport = null)
    {
        transport ??= DemoTransport.Embedded;
        console.MarkupLine("[bold]Treaty demo[/]: a coordinator and three Shop services, each its own process, database and port.");
        console.MarkupLineInterpolated($"Choreography events travel over {transport.Description}.");
        DemoEnvironment env;
        try
        {
            env = await console.Status().StartAsync("Starting the coordinator and the Shop services…",
                _ => DemoEnvironment.StartAsync(dataDir, cancellationToken, inDoubtAfter: DemoEnvironment.DemoInDoubtAfter, shopArguments: transport.ShopArguments));
        }
        catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or FileNotFoundException or HttpRequestException
            || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            console.MarkupLineInterpolated($"[red]Could not start the demo:[/] {ex.Message}");
            return 1;
        }

        await using (env)
        {
            foreach (var process in env.Processes)
            {
                console.MarkupLineInterpolated($"  {process.Name,-12} pid {process.Id}");
            }

            using var client = new Treaty.Client.TreatyClient(new Uri(env.CoordinatorUrl));
            var scenarios = new DemoScenarios(
                env,
                showStuck: async _ =>
                {
                    console.MarkupLine("[grey]$ treaty tx list --stuck[/]");
                    await TxCommands.ListAsync(client, stuckOnly: true, console, cancellationToken);
                },
                retry: async gid =>
                {
                    console.MarkupLineInterpolated($"[grey]$ treaty tx retry {gid}[/]");
                    await TxCommands.RetryAsync(client, gid, console, cancellationToken);
                });
            var passed = true;
            if (plan.Everything)
            {
                passed &= await RunScenariosAsync(scenarios, client, console, cancellationToken);
            }

            if (plan.Protocols.Any())
            {
                passed &= await RunProtocolsAsync(new ProtocolComparison(scenarios), plan.Protocols, transport, console, cancellationToken);
            }

            foreach (var experiment in plan.Experiments)
            {
                passed &= await RunExperimentAsync(experiment, new ExperimentContext(env, console), console, cancellationToken);
            }

            // Whatever ran, the Shop must add up at the end.
            var invariants = await scenarios.InvariantsAsync(cancellationToken);
            foreach (var failed in invariants.Where(c => !c.Passed))
            {
                console.MarkupLineInterpolated($"[red]✗ {failed.What}: {failed.Detail}[/]");
            }

            passed &= invariants.All(c => c.Passed);
            console.MarkupLine(passed ? "[green bold]Every invariant held.[/]" : "[red bold]Some invariants failed (see above).[/]");
            if (keep)
            {
                console.MarkupLine("Still running (Ctrl+C to stop):");
                console.MarkupLineInterpolated($"  coordinator {env.CoordinatorUrl}  (API {env.CoordinatorUrl}/api/v1/transactions, OpenAPI {env.CoordinatorUrl}/openapi/v1.json)");
                console.MarkupLineInterpolated($"  order       {env.OrderUrl}");
                console.MarkupLineInterpolated($"  payment     {env.PaymentUrl}");
                console.MarkupLineInterpolated($"  inventory   {env.InventoryUrl}");
                console.MarkupLineInterpolated($"  data        {env.Root}");
                try
                {
                    await Task.Delay(Timeout.InfiniteTimeSpan, TimeProvider.System, cancellationToken);
                }
                catch (OperationCanceledException)
                {
                    // Ctrl+C
                }
            }

            return passed ? 0 : 1;
        }
    }

    private static async Task<bool> RunScenariosAsync(DemoScenarios scenarios, Treaty.Client.TreatyClient client, IAnsiConsole console, CancellationToken cancellationToken)
    {
        var results = new List<ScenarioResult>();
        foreach (var (name, run) in scenarios.All())
        {
            ScenarioResult result;
            try
            {
                result = await console.Status().StartAsync($"Running: {name}…", _ => run(cancellationToken));
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                result = new ScenarioResult(name, "error", TimeSpan.Zero, [new Check("scenario ran", false, ex.Message)], null);
            }

            results.Add(result);
            console.MarkupLine((result.Passed ? "[green]✓[/] " : "[red]✗[/] ") + Markup.Escape($"{name}: {result.Outcome} in {result.Duration.TotalMilliseconds:0} ms"));
            if (name == "participant 503 twice" && result.Gid is not null)
            {
                console.MarkupLineInterpolated($"[grey]$ treaty tx show {result.Gid}[/]");
                await TxCommands.ShowAsync(client, result.Gid, console, cancellationToken);
            }
        }

        var table = new Table().Border(TableBorder.Rounded).Title("Saga scenarios");
        table.AddColumn("scenario");
        table.AddColumn("outcome");
        table.AddColumn(new TableColumn("duration").RightAligned());
        table.AddColumn("invariant checks");
        foreach (var result in results)
        {
            table.AddRow(Markup.Escape(result.Name), Markup.Escape(result.Outcome), $"{result.Duration.TotalMilliseconds:0} ms", Checks(result.Checks));
        }

        console.Write(table);
        return results.All(r => r.Passed);
    }

    private static async Task<bool> RunProtocolsAsync(ProtocolComparison comparison, IEnumerable<string> protocols, DemoTransport transport, IAnsiConsole console, CancellationToken cancellationToken)
    {
        var rows = new List<ProtocolRow>();
        foreach (var protocol in protocols)
        {
            try
            {
                var result = await console.Status().StartAsync($"Checkout cases under {protocol}…", _ => comparison.RunAsync(protocol, cancellationToken));
                rows.AddRange(result);
                console.MarkupLine((result.All(r => r.Passed) ? "[green]✓[/] " : "[red]✗[/] ") + Markup.Escape($"checkout under {protocol}: {string.Join(", ", result.Select(r => r.Outcome.Split(':')[0]))}"));
            }
            catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
            {
                rows.Add(new ProtocolRow(protocol, "all", "error", TimeSpan.Zero, 0, 0, 0, [new Check("cases ran", false, ex.Message)]));
                console.MarkupLineInterpolated($"[red]✗[/] checkout under {protocol}: {ex.Message}");
            }
        }

        var table = new Table().Border(TableBorder.Rounded).Title($"Every protocol, the same checkouts (choreography over {transport.Name})");
        table.AddColumn("protocol");
        table.AddColumn("case");
        table.AddColumn("outcome");
        table.AddColumn(new TableColumn("latency").RightAligned());
        table.AddColumn(new TableColumn("calls").RightAligned());
        table.AddColumn(new TableColumn("forced writes").RightAligned());
        table.AddColumn("checks");
        foreach (var row in rows)
        {
            table.AddRow(Markup.Escape(row.Protocol), Markup.Escape(row.Case), Markup.Escape(row.Outcome), $"{row.Latency.TotalMilliseconds:0} ms",
                $"{row.Calls}", $"{row.ForcedWrites} of {row.Writes}", Checks(row.Checks));
        }

        console.Write(table);
        return rows.All(r => r.Passed);
    }

    private static async Task<bool> RunExperimentAsync(Experiment experiment, ExperimentContext context, IAnsiConsole console, CancellationToken cancellationToken)
    {
        console.MarkupLineInterpolated($"[bold]Experiment {experiment.Name}[/]: {experiment.Claim}");
        ExperimentResult result;
        try
        {
            result = await experiment.Run(context, cancellationToken);
        }
        catch (Exception ex) when (ex is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            result = new ExperimentResult(experiment.Name, "error: " + ex.Message, [new Check("experiment ran", false, ex.ToString())]);
        }

        console.MarkupLine((result.Passed ? "[green]✓[/] " : "[red]✗[/] ") + Markup.Escape($"{result.Name}: {result.Summary}"));
        if (result.Table is not null)
        {
            console.Write(result.Table);
        }

        foreach (var check in result.Checks)
        {
            console.MarkupLine((check.Passed ? "  [green]✓[/] " : "  [red]✗[/] ") + Markup.Escape(check.What + (check.Passed || check.Detail is null ? "" : ": " + check.Detail)));
        }

        return result.Passed;
    }

    private static string Checks(IReadOnlyList<Check> checks)
    {
        var failed = checks.Where(c => !c.Passed).ToList();
        return failed.Count == 0
            ? $"[green]{checks.Count}/{checks.Count} passed[/]"
            : $"[red]{checks.Count - failed.Count}/{checks.Count} passed[/]\n" + string.Join("\n", failed.Select(f => Markup.Escape($"✗ {f.What}: {f.Detail}")));
    }
}
