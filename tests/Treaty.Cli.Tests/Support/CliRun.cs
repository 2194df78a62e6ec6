using System.CommandLine;
using System.Diagnostics;
using Treaty.Cli;

namespace Treaty.Cli.Tests.Support;

/// <summary>What one run of the CLI printed and returned.</summary>
public sealed record CliResult(int ExitCode, string Out, string Error)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Out}\n--- stderr\n{Error}";
}

/// <summary>Runs the <c>treaty</c> CLI, in this process (through its entry point, writers redirected) or as a process.</summary>
public static class CliRun
{
    /// <summary>The built CLI, next to the tests (the test project references it).</summary>
    public static string Dll => Path.Combine(AppContext.BaseDirectory, "treaty.dll");

    /// <summary>The <c>tx</c> commands in this process, through the same parse-and-exit-code path as <c>Program</c>.</summary>
    internal static async Task<CliResult> TxAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await CliConsole.RunAsync(new RootCommand { TxCommands.Create() }, args, new InvocationConfiguration { Output = output, Error = error });
        return new CliResult(exit, output.ToString(), error.ToString());
    }

    /// <summary><paramref name="command"/> in this process, through the same parse-and-exit-code path as <c>Program</c>.</summary>
    internal static async Task<CliResult> CommandAsync(Command command, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await CliConsole.RunAsync(new RootCommand { command }, args, new InvocationConfiguration { Output = output, Error = error });
        return new CliResult(exit, output.ToString(), error.ToString());
    }

    /// <summary>
    /// <c>dotnet treaty.dll args</c> with stdout and stderr redirected (a pipe, as in <c>treaty ... | less</c>),
    /// in <paramref name="workingDirectory"/>, with <paramref name="environment"/> added to ours
    /// (a null value removes the variable).
    /// </summary>
    public static async Task<CliResult> ProcessAsync(
        IEnumerable<string> args, string? workingDirectory = null, IDictionary<string, string?>? environment = null, TimeSpan? timeout = null)
    {
        var info = new ProcessStartInfo(ChildProcess.DotnetHost())
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        info.ArgumentList.Add(Dll);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }

        info.Environment["DOTNET_NOLOGO"] = "1";
        foreach (var (key, value) in environment ?? new Dictionary<string, string?>())
        {
            if (value is null)
            {
                info.Environment.Remove(key);
            }
            else
            {
                info.Environment[key] = value;
            }
        }

        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var limit = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(limit.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"treaty {string.Join(' ', args)} did not exit in time.");
        }

        return new CliResult(process.ExitCode, await stdout, await stderr);
    }
}
